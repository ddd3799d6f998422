"""Mask tokens: add them to a tokenizer and model, and record them in the model config.

SPACE (and SDSAT, with its "adaptive" tokens) needs placeholder ids that stand for unknown future
tokens. This module owns:

* `MaskSpec`: the three fields every tool reads (`mask_id`, `mask_num`, `mask_diff`), stored as
  plain attributes of the HF model config so a saved checkpoint needs no flags later. `mask_num` is
  the width the masks were trained with; `decode_mask_num`, when recorded (from `space.json`), is the
  default decoding k (at most that width), so a merged and saved model keeps both;
* `add_mask_tokens`: adds the ids to the tokenizer (with filler special tokens when an explicit id
  lies beyond the vocabulary, e.g. 32002 for a 32,000-token LLaMA vocabulary), resizes the input
  embeddings and an untied lm_head, and initialises the new rows with the mean of the old ones;
* `resolve_mask_spec`: merges explicit options with what the config records, with one clear error
  when a model has no mask tokens or an explicit k exceeds the width its masks were trained with;
* `text_use`: the one rule (masks and SATs) for which existing ids may become placeholders.

An explicit id may also be a token the tokenizer already has but does not use for text (an added
`<mask>`, an unused special token) or an embedding row past the tokenizer (a checkpoint already
trained with that id, e.g. SPACE's Vicuna with row 32002). Such rows are kept as they are: they are
either trained for this purpose or unused, and re-initialising would throw a trained row away.
Rows that did not exist are mean-initialised, as are the rows of ids we pick ourselves
(`mask_id=None`: the first free id, whose row, if any, is unused padding).

Under DeepSpeed ZeRO-3 the weights are partitioned while they load; `gathered` collects the full
embedding and lm_head matrices to read and write rows (transformers' resize gathers on its own).

SDSAT's semantic adaptive tokens (SATs) use the same machinery under their own config fields
(`sat_id`, `sat_num`), so one model can carry both: `SatSpec`, `add_sat_tokens`, `resolve_sat_spec`.
SDSAT repeats one id k times (the released CodeLlama models use the existing id 32011).

The original SPACE code never resized the vocabulary (docs/spec/SPACE.md §1.6); mean initialisation is our
deterministic choice for rows whose original initialisation is unknown.
"""

from __future__ import annotations

import contextlib
import numbers
import re
from dataclasses import dataclass

import torch

from space.errors import SpaceError

MASK_TOKEN = "<space_mask_{}>"
FILLER_TOKEN = "<space_filler_{}>"
CONFIG_FIELDS = ("mask_id", "mask_num", "mask_diff")
DECODE_MASK_NUM_FIELD = "decode_mask_num"  # config field: the default decoding k (mask_num: the trained width)
DEFAULT_MASK_NUM = 5


@dataclass(frozen=True)
class MaskSpec:
    """Which ids are mask tokens: `mask_id`, or `mask_id .. mask_id + mask_num` with `mask_diff`."""

    mask_id: int
    mask_num: int = DEFAULT_MASK_NUM
    mask_diff: bool = False

    @property
    def num_ids(self) -> int:
        """How many distinct ids the spec uses: k+1 with `mask_diff` (training appends k+1 masks)."""
        return self.mask_num + 1 if self.mask_diff else 1

    @property
    def ids(self) -> list[int]:
        return list(range(self.mask_id, self.mask_id + self.num_ids))

    def group_ids(self, length: int) -> list[int]:
        """Ids of `length` consecutive mask slots: slot j holds `mask_id + j` under `mask_diff`."""
        return [self.mask_id + j if self.mask_diff else self.mask_id for j in range(length)]

    def validate(self, vocab_size: int) -> None:
        if self.mask_num < 1:
            raise SpaceError(f"mask_num must be >= 1 (got {self.mask_num}); SPACE drafts mask_num tokens per step")
        if self.mask_id < 0 or self.mask_id + self.num_ids - 1 >= vocab_size:
            last = self.mask_id + self.num_ids - 1
            raise SpaceError(
                f"mask id {last if self.mask_id >= 0 else self.mask_id} is outside the model vocabulary "
                f"(size {vocab_size}); add mask tokens with space.add_mask_tokens(...) or pass a mask_id "
                f"below {vocab_size - self.num_ids + 1}"
            )


def read_mask_spec(config) -> MaskSpec | None:
    """The mask spec a model decodes with by default, or None when the model has no mask tokens.

    Its `mask_num` is the default decoding k: `decode_mask_num` when the config records one, else the
    trained width `mask_num`.
    """
    mask_id = getattr(config, "mask_id", None)
    if mask_id is None:
        return None
    k = getattr(config, DECODE_MASK_NUM_FIELD, None) or getattr(config, "mask_num", None)
    return MaskSpec(
        mask_id=int(mask_id),
        mask_num=int(k or DEFAULT_MASK_NUM),
        mask_diff=bool(getattr(config, "mask_diff", False)),
    )


def record_mask_spec(config, spec: MaskSpec) -> None:
    """Write the spec into the config so `save_pretrained` stores it in config.json. A decoding k chosen
    for an earlier width goes: the new width is also the decoding default until one is chosen again."""
    config.mask_id = spec.mask_id
    config.mask_num = spec.mask_num
    config.mask_diff = spec.mask_diff
    if hasattr(config, DECODE_MASK_NUM_FIELD):
        delattr(config, DECODE_MASK_NUM_FIELD)


def resolve_mask_spec(
    config, mask_id: int | None = None, mask_num: int | None = None, mask_diff: bool | None = None
) -> MaskSpec:
    """Explicit options win; missing ones come from the config; no mask id anywhere is an error.

    An explicit `mask_num` may not exceed the width the config's masks were trained with (its `mask_num`)
    when they are the masks decoded with: group slots past that width hold predictions the model never
    learned (with `mask_diff`, ids that are not masks at all). Untrained masks get a wider width from
    `add_mask_tokens` first.
    """
    recorded = read_mask_spec(config)
    if recorded is not None:
        _check_trained_width("mask_num", mask_num, getattr(config, "mask_num", None), mask_id, recorded.mask_id,
                             "the width this model's masks were trained with", "untrained masks", "a wider width",
                             f"space.add_mask_tokens(model, tokenizer, mask_num={mask_num}, mask_id={recorded.mask_id}"
                             f"{', mask_diff=True' if recorded.mask_diff else ''})")
    if mask_id is None:
        if recorded is None:
            raise SpaceError(
                "this model has no SPACE mask tokens recorded in its config: add them with "
                "space.add_mask_tokens(model, tokenizer, mask_num=...), train one with scripts/train_sft.py, "
                "or pass mask_id= explicitly"
            )
        mask_id = recorded.mask_id
    spec = MaskSpec(
        mask_id=int(mask_id),
        mask_num=int(mask_num if mask_num is not None else (recorded.mask_num if recorded else DEFAULT_MASK_NUM)),
        mask_diff=bool(mask_diff if mask_diff is not None else (recorded.mask_diff if recorded else False)),
    )
    spec.validate(config.vocab_size)
    return spec


def add_mask_tokens(
    model,
    tokenizer,
    mask_num: int = DEFAULT_MASK_NUM,
    mask_id: int | None = None,
    mask_diff: bool = False,
) -> MaskSpec:
    """Make `mask_id` (and, with `mask_diff`, the next `mask_num` ids) mask tokens of model and tokenizer.

    `mask_id=None` takes the first free id, `len(tokenizer)`. An explicit id beyond the tokenizer is
    reached with filler special tokens (32000 and 32001 for LLaMA with `mask_id=32002`). An explicit id
    that the tokenizer already has must not be one it uses for text (`text_use`); it gets no second
    token name. Rows the model already has are kept when the id is explicit (see the module
    docstring); new rows are mean-initialised. Returns the spec, also recorded in `model.config`.
    """
    check_placeholder_args(model, tokenizer, "mask_num", mask_num, "mask_id", mask_id)
    if not isinstance(mask_diff, bool):
        raise SpaceError(f"mask_diff must be True or False (got {mask_diff!r})")
    first_free = len(tokenizer)
    spec = MaskSpec(mask_id=first_free if mask_id is None else int(mask_id), mask_num=mask_num, mask_diff=mask_diff)
    for token_id in spec.ids:
        check_placeholder_id(tokenizer, token_id, "mask id", "mask_id", "new mask tokens")

    new_tokens = [FILLER_TOKEN.format(i) for i in range(first_free, spec.mask_id)]
    new_tokens += [MASK_TOKEN.format(j) for j, token_id in enumerate(spec.ids) if token_id >= first_free]
    # the mean excludes an existing mask row (its id is below first_free)
    _append_tokens(model, tokenizer, new_tokens, keep_existing_rows=mask_id is not None,
                   mean_of=min(spec.mask_id, first_free))
    if tokenizer.convert_tokens_to_ids(MASK_TOKEN.format(0)) != spec.mask_id and spec.mask_id >= first_free:
        raise SpaceError(f"tokenizer assigned an unexpected id to the mask token (wanted {spec.mask_id})")
    spec.validate(vocab_rows(model))
    record_mask_spec(model.config, spec)
    return spec


_OWN_TOKEN_PREFIXES = ("<space_mask_", "<space_filler_", "<sdsat_sat>")
_FRAMING_TOKENS = ("bos", "eos", "pad", "unk", "cls", "sep")
_MARKUP = re.compile(r"<[^<>\s]+>|\[[^\[\]\s]+\]")  # <mask>, <|reserved_0|>, [MASK]: control-token spelling


def text_use(tokenizer, token_id: int) -> str | None:
    """How the tokenizer uses `token_id` for text, or None when the id is free to become a placeholder.

    Free: ids past the tokenizer, our own tokens, and added tokens that are special or spelled as
    control tokens (`<mask>`, `[MASK]`) unless they frame text (bos/eos/pad/unk/cls/sep) or the chat
    template writes them. Everything else is an ordinary text piece (a vocabulary entry, or an added
    token that reads as text, such as a run of spaces). Fine-tuning rewrites a placeholder's row, so it
    must not be one that real text needs.
    """
    if token_id >= len(tokenizer):
        return None
    token = str(tokenizer.convert_ids_to_tokens(token_id))
    if token.startswith(_OWN_TOKEN_PREFIXES):
        return None
    for role in _FRAMING_TOKENS:
        if getattr(tokenizer, f"{role}_token_id", None) == token_id:
            return f"its {role} token"
    added = tokenizer.added_tokens_decoder.get(token_id)
    if added is None:
        return "an ordinary text piece"
    if not added.special and not _MARKUP.fullmatch(added.content.strip()):
        return "an added token that reads as text"
    templates = tokenizer.chat_template
    templates = templates.values() if isinstance(templates, dict) else [templates] if templates else []
    if any(added.content in template for template in templates):
        return "the chat template writes it"
    return None


MAX_FILLERS = 1024  # filler rows an explicit id may add past the vocabulary (LLaMA's 32002 needs 2)


def check_placeholder_args(model, tokenizer, count_name: str, count, id_name: str, token_id) -> None:
    """One line for arguments `add_mask_tokens` / `add_sat_tokens` cannot use: not a model and tokenizer, a
    count that is not a whole number >= 1, or an id that is negative or so far past the vocabulary that
    reaching it would add more than `MAX_FILLERS` rows (10**9 would try to allocate terabytes)."""
    if not (isinstance(model, torch.nn.Module) and callable(getattr(model, "get_input_embeddings", None))):
        raise SpaceError(f"model must be a Hugging Face model (e.g. from space.load_model), not {type(model).__name__}")
    if not (hasattr(tokenizer, "__len__") and callable(getattr(tokenizer, "convert_tokens_to_ids", None))):
        raise SpaceError(f"tokenizer must be a Hugging Face tokenizer, not {type(tokenizer).__name__}")
    if not _is_count(count) or count < 1:
        raise SpaceError(f"{count_name} must be a whole number >= 1 (got {count!r})")
    if token_id is None:
        return
    if not _is_count(token_id) or token_id < 0:
        raise SpaceError(f"{id_name} must be None or a whole number >= 0 (got {token_id!r})")
    limit = max(len(tokenizer), vocab_rows(model)) + MAX_FILLERS
    if token_id >= limit:
        raise SpaceError(f"{id_name} {token_id} is far past the vocabulary ({len(tokenizer)} tokens, "
                         f"{vocab_rows(model)} embedding rows): reaching it would add {token_id - len(tokenizer)} "
                         f"filler tokens; leave {id_name} unset to take the first free id, or pick one below {limit}")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_placeholder_id(tokenizer, token_id: int, label: str, flag: str, new_what: str) -> None:
    """One line naming the fix when `token_id` is a token the tokenizer uses for text (see `text_use`)."""
    use = text_use(tokenizer, token_id)
    if use is not None:
        token = tokenizer.convert_ids_to_tokens(token_id)
        raise SpaceError(
            f"{label} {token_id} is the token {token!r}, which the tokenizer uses for text ({use}); leave {flag} "
            f"unset to add {new_what}, or pick an id >= {len(tokenizer)} or an unused added/special token"
        )


def _append_tokens(model, tokenizer, names: list[str], keep_existing_rows: bool = False,
                   mean_of: int | None = None) -> None:
    """Add special tokens `names` after the tokenizer's last id; resize and mean-initialise their rows."""
    first_free = len(tokenizer)
    if names:
        tokenizer.add_special_tokens({"extra_special_tokens": names}, replace_extra_special_tokens=False)
    resize_and_init(model, new_ids=list(range(first_free, len(tokenizer))), keep_existing_rows=keep_existing_rows,
                    mean_of=mean_of)


def vocab_rows(model) -> int:
    """Rows of the input embedding; under ZeRO-3 a partitioned weight's `shape` is empty, `ds_shape` is real."""
    weight = model.get_input_embeddings().weight
    return int(getattr(weight, "ds_shape", weight.shape)[0])


def gathered(params: list[torch.Tensor]):
    """Context in which ZeRO-3 partitioned `params` hold their full data; rank 0's writes are kept.

    Every rank must enter it (it is a collective). A no-op for ordinary tensors.
    """
    if not any(hasattr(param, "ds_id") for param in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


@torch.no_grad()
def resize_and_init(model, new_ids: list[int], keep_existing_rows: bool = False, mean_of: int | None = None) -> None:
    """Grow the embeddings to cover `new_ids` and set their rows to the mean of the first `mean_of` rows
    (default: every row below the first new id, the real tokens).

    With `keep_existing_rows`, only rows the resize creates are set; rows the model had are kept.
    """
    if not new_ids:
        return
    old_rows = vocab_rows(model)
    needed = max(new_ids) + 1
    if needed > old_rows:  # transformers' resize gathers ZeRO-3 weights itself
        model.resize_token_embeddings(needed, mean_resizing=False)
    init_ids = [i for i in new_ids if i >= old_rows] if keep_existing_rows else list(new_ids)
    known = min(new_ids) if mean_of is None else mean_of
    if init_ids:
        matrices = _vocab_matrices(model)
        with gathered(matrices):
            for matrix in matrices:
                matrix[init_ids] = matrix[:known].float().mean(dim=0).to(matrix.dtype)
    model.config.vocab_size = vocab_rows(model)


def _vocab_matrices(model) -> list[torch.Tensor]:
    """Input embedding and (when untied) output embedding weights, each `[vocab, hidden]`."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    # identity, not data_ptr: ZeRO-3 partitioned weights all have empty storage
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    return matrices


# --- SDSAT semantic adaptive tokens ------------------------------------------------------------

SAT_TOKEN = "<sdsat_sat>"
SAT_CONFIG_FIELDS = ("sat_id", "sat_num")
DEFAULT_SAT_NUM = 5


@dataclass(frozen=True)
class SatSpec:
    """SDSAT's adaptive token: one id `sat_id`, repeated `sat_num` (k) times after the last real token."""

    sat_id: int
    sat_num: int = DEFAULT_SAT_NUM

    @property
    def ids(self) -> list[int]:
        return [self.sat_id]

    def validate(self, vocab_size: int) -> None:
        if self.sat_num < 1:
            raise SpaceError(f"sat_num must be >= 1 (got {self.sat_num}); SDSAT drafts sat_num tokens per round")
        if not 0 <= self.sat_id < vocab_size:
            raise SpaceError(
                f"sat_id {self.sat_id} is outside the model vocabulary [0, {vocab_size}); add an adaptive token "
                f"with space.add_sat_tokens(...) or pass a sat_id below {vocab_size}"
            )


def read_sat_spec(config) -> SatSpec | None:
    """The SDSAT spec recorded in a model config, or None when the model has no adaptive token."""
    sat_id = getattr(config, "sat_id", None)
    if sat_id is None:
        return None
    return SatSpec(sat_id=int(sat_id), sat_num=int(getattr(config, "sat_num", None) or DEFAULT_SAT_NUM))


def record_sat_spec(config, spec: SatSpec) -> None:
    config.sat_id = spec.sat_id
    config.sat_num = spec.sat_num


def resolve_sat_spec(config, sat_id: int | None = None, sat_num: int | None = None) -> SatSpec:
    """Explicit options win; missing ones come from the config; no adaptive token anywhere is an error.

    As for masks, an explicit `sat_num` may not exceed the recorded one (the number of adaptive tokens
    the model was trained to read after a real token) when the recorded token is the one decoded with.
    """
    recorded = read_sat_spec(config)
    if recorded is not None:
        _check_trained_width("sat_num", sat_num, getattr(config, "sat_num", None), sat_id, recorded.sat_id,
                             "the number of adaptive tokens this model was trained with", "an untrained token",
                             "more",
                             f"space.add_sat_tokens(model, tokenizer, sat_num={sat_num}, sat_id={recorded.sat_id})")
    if sat_id is None and recorded is None:
        raise SpaceError(
            "this model has no SDSAT adaptive token recorded in its config: add one with "
            "space.add_sat_tokens(model, tokenizer, sat_num=...), train one with scripts/train_sft.py --sdsat true, "
            "or pass sat_id= explicitly (32011 for the released CodeLlama SDSAT models)"
        )
    spec = SatSpec(
        sat_id=int(sat_id if sat_id is not None else recorded.sat_id),
        sat_num=int(sat_num if sat_num is not None else (recorded.sat_num if recorded else DEFAULT_SAT_NUM)),
    )
    spec.validate(config.vocab_size)
    return spec


def check_sat_token(tokenizer, sat_id: int) -> None:
    """Refuse an id that the tokenizer uses for text (`text_use`, the rule mask ids follow too)."""
    if sat_id < 0:
        raise SpaceError(f"sat_id must be >= 0 (got {sat_id})")
    check_placeholder_id(tokenizer, sat_id, "sat_id", "sat_id", "a new adaptive token")


def add_sat_tokens(model, tokenizer, sat_num: int = DEFAULT_SAT_NUM, sat_id: int | None = None) -> SatSpec:
    """Make `sat_id` the SDSAT adaptive token of model and tokenizer and record it in `model.config`.

    `sat_id=None` reuses an existing `<sdsat_sat>` token, else adds one at the first free id. An explicit
    id inside the tokenizer must be one it does not use for text (`check_sat_token`); its row is kept as
    it is (as the released CodeLlama models keep theirs). An id past the tokenizer is reached with filler
    tokens; rows the model already has are kept, new rows are mean-initialised like SPACE's masks.
    """
    check_placeholder_args(model, tokenizer, "sat_num", sat_num, "sat_id", sat_id)
    first_free = len(tokenizer)
    explicit = sat_id is not None
    if sat_id is None:
        existing = tokenizer.convert_tokens_to_ids(SAT_TOKEN)
        known = isinstance(existing, int) and existing != tokenizer.unk_token_id and existing < first_free
        sat_id = existing if known else first_free
    sat_id = int(sat_id)
    check_sat_token(tokenizer, sat_id)
    if sat_id >= first_free:
        _append_tokens(model, tokenizer, [FILLER_TOKEN.format(i) for i in range(first_free, sat_id)] + [SAT_TOKEN],
                       keep_existing_rows=explicit)
        if tokenizer.convert_tokens_to_ids(SAT_TOKEN) != sat_id:
            raise SpaceError(f"tokenizer assigned an unexpected id to the adaptive token (wanted {sat_id})")
    spec = SatSpec(sat_id=sat_id, sat_num=int(sat_num))
    spec.validate(vocab_rows(model))
    record_sat_spec(model.config, spec)
    return spec


def _check_trained_width(name: str, requested, trained, requested_id, recorded_id, what: str, untrained: str,
                         more: str, fix: str) -> None:
    """Refuse a k above what the model's own recorded tokens were trained for (another id is not bound)."""
    if requested is None or trained is None or requested_id not in (None, recorded_id):
        return
    if int(requested) > int(trained):
        raise SpaceError(f"{name} {requested} is above {what} (config {name} {trained}); pass {name} <= {trained}, "
                         f"or for {untrained} record {more} first: {fix}")
