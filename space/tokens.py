"""Mask tokens: add them to a tokenizer and model, and record them in the model config.

SPACE (and SDSAT, with its "adaptive" tokens) needs placeholder ids that stand for unknown future
tokens. This module owns:

* `MaskSpec`: the three fields every tool reads (`mask_id`, `mask_num`, `mask_diff`), stored as
  plain attributes of the HF model config so a saved checkpoint needs no flags later;
* `add_mask_tokens`: adds the ids to the tokenizer (with filler special tokens when an explicit id
  lies beyond the vocabulary, e.g. 32002 for a 32,000-token LLaMA vocabulary), resizes the input
  embeddings and an untied lm_head, and initialises the new rows with the mean of the old ones;
* `resolve_mask_spec`: merges explicit options with what the config records, with one clear error
  when a model has no mask tokens.

SDSAT's semantic adaptive tokens (SATs) use the same machinery under their own config fields
(`sat_id`, `sat_num`), so one model can carry both: `SatSpec`, `add_sat_tokens`, `resolve_sat_spec`.
SDSAT repeats one id k times (the released CodeLlama models use the existing id 32011).

The original SPACE code never resized the vocabulary (spec §1.6); mean initialisation is our
deterministic choice for rows whose original initialisation is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.errors import SpaceError

MASK_TOKEN = "<space_mask_{}>"
FILLER_TOKEN = "<space_filler_{}>"
CONFIG_FIELDS = ("mask_id", "mask_num", "mask_diff")
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
    """The mask spec recorded in a model config, or None when the model has no mask tokens."""
    mask_id = getattr(config, "mask_id", None)
    if mask_id is None:
        return None
    return MaskSpec(
        mask_id=int(mask_id),
        mask_num=int(getattr(config, "mask_num", None) or DEFAULT_MASK_NUM),
        mask_diff=bool(getattr(config, "mask_diff", False)),
    )


def record_mask_spec(config, spec: MaskSpec) -> None:
    """Write the spec into the config so `save_pretrained` stores it in config.json."""
    config.mask_id = spec.mask_id
    config.mask_num = spec.mask_num
    config.mask_diff = spec.mask_diff


def resolve_mask_spec(
    config, mask_id: int | None = None, mask_num: int | None = None, mask_diff: bool | None = None
) -> MaskSpec:
    """Explicit options win; missing ones come from the config; no mask id anywhere is an error."""
    recorded = read_mask_spec(config)
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


def _is_own_token(tokenizer, token_id: int) -> bool:
    token = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(token, str) and token.startswith(("<space_mask_", "<space_filler_"))


def add_mask_tokens(
    model,
    tokenizer,
    mask_num: int = DEFAULT_MASK_NUM,
    mask_id: int | None = None,
    mask_diff: bool = False,
) -> MaskSpec:
    """Make `mask_id` (and, with `mask_diff`, the next `mask_num` ids) mask tokens of model and tokenizer.

    `mask_id=None` takes the first free id, `len(tokenizer)`. An explicit id beyond the tokenizer is
    reached with filler special tokens (32000 and 32001 for LLaMA with `mask_id=32002`). An id that
    the tokenizer already uses is accepted only when it is one of our own mask tokens (re-adding is
    a no-op). Returns the spec, also recorded in `model.config`.
    """
    first_free = len(tokenizer)
    spec = MaskSpec(mask_id=first_free if mask_id is None else int(mask_id), mask_num=mask_num, mask_diff=mask_diff)
    if spec.mask_num < 1:
        raise SpaceError(f"mask_num must be >= 1 (got {spec.mask_num})")
    if spec.mask_id < 0:
        raise SpaceError(f"mask_id must be >= 0 (got {spec.mask_id})")
    for token_id in spec.ids:
        if token_id < first_free and not _is_own_token(tokenizer, token_id):
            token = tokenizer.convert_ids_to_tokens(token_id)
            raise SpaceError(
                f"mask id {token_id} is already the token {token!r} of the tokenizer; pick mask_id >= "
                f"{first_free} or leave it unset to take the first free id"
            )

    new_tokens = [FILLER_TOKEN.format(i) for i in range(first_free, spec.mask_id)]
    new_tokens += [MASK_TOKEN.format(j) for j, token_id in enumerate(spec.ids) if token_id >= first_free]
    _append_tokens(model, tokenizer, new_tokens)
    if tokenizer.convert_tokens_to_ids(MASK_TOKEN.format(0)) != spec.mask_id and spec.mask_id >= first_free:
        raise SpaceError(f"tokenizer assigned an unexpected id to the mask token (wanted {spec.mask_id})")
    record_mask_spec(model.config, spec)
    return spec


def _append_tokens(model, tokenizer, names: list[str]) -> None:
    """Add special tokens `names` after the tokenizer's last id; resize and mean-initialise their rows."""
    first_free = len(tokenizer)
    if names:
        tokenizer.add_special_tokens({"extra_special_tokens": names}, replace_extra_special_tokens=False)
    resize_and_init(model, new_ids=list(range(first_free, len(tokenizer))))


@torch.no_grad()
def resize_and_init(model, new_ids: list[int]) -> None:
    """Grow the embeddings to cover `new_ids` and set those rows to the mean of the old rows."""
    if not new_ids:
        return
    embeddings = model.get_input_embeddings()
    old_rows = embeddings.weight.shape[0]
    needed = max(new_ids) + 1
    if needed > old_rows:
        model.resize_token_embeddings(needed, mean_resizing=False)
    known = min(new_ids)  # rows below the first new id are real, trained tokens
    for matrix in _vocab_matrices(model):
        mean = matrix[:known].float().mean(dim=0).to(matrix.dtype)
        matrix[new_ids] = mean
    model.config.vocab_size = model.get_input_embeddings().weight.shape[0]


def _vocab_matrices(model) -> list[torch.Tensor]:
    """Input embedding and (when untied) output embedding weights, each `[vocab, hidden]`."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
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
    """Explicit options win; missing ones come from the config; no adaptive token anywhere is an error."""
    recorded = read_sat_spec(config)
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
    """Refuse an id that the tokenizer uses for text: an ordinary piece, bos/eos/pad/unk, or a chat-template token.

    Ids past the tokenizer, our own tokens and unused special tokens are fine. Fine-tuning overwrites
    the SAT's embedding row, so it must not be one that real text needs.
    """
    if sat_id < 0:
        raise SpaceError(f"sat_id must be >= 0 (got {sat_id})")
    if sat_id >= len(tokenizer):
        return
    token = tokenizer.convert_ids_to_tokens(sat_id)
    if token == SAT_TOKEN or str(token).startswith("<space_filler_"):
        return
    added = tokenizer.added_tokens_decoder.get(sat_id)
    named = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    in_template = isinstance(tokenizer.chat_template, str) and str(token) in tokenizer.chat_template
    if added is None or not added.special or sat_id in named or in_template:
        raise SpaceError(
            f"sat_id {sat_id} is the token {token!r}, which the tokenizer uses for text; leave sat_id unset to add "
            f"a new adaptive token, or pick an id >= {len(tokenizer)} or an unused special token"
        )


def add_sat_tokens(model, tokenizer, sat_num: int = DEFAULT_SAT_NUM, sat_id: int | None = None) -> SatSpec:
    """Make `sat_id` the SDSAT adaptive token of model and tokenizer and record it in `model.config`.

    `sat_id=None` reuses an existing `<sdsat_sat>` token, else adds one at the first free id. An explicit
    id inside the tokenizer must be an unused special token (`check_sat_token`); its row is kept as it
    is (as the released CodeLlama models keep theirs). An id past the tokenizer is reached with filler
    tokens and mean-initialised like SPACE's masks.
    """
    if sat_num < 1:
        raise SpaceError(f"sat_num must be >= 1 (got {sat_num})")
    first_free = len(tokenizer)
    if sat_id is None:
        existing = tokenizer.convert_tokens_to_ids(SAT_TOKEN)
        known = isinstance(existing, int) and existing != tokenizer.unk_token_id and existing < first_free
        sat_id = existing if known else first_free
    sat_id = int(sat_id)
    check_sat_token(tokenizer, sat_id)
    if sat_id >= first_free:
        _append_tokens(model, tokenizer, [FILLER_TOKEN.format(i) for i in range(first_free, sat_id)] + [SAT_TOKEN])
        if tokenizer.convert_tokens_to_ids(SAT_TOKEN) != sat_id:
            raise SpaceError(f"tokenizer assigned an unexpected id to the adaptive token (wanted {sat_id})")
    spec = SatSpec(sat_id=sat_id, sat_num=int(sat_num))
    spec.validate(model.get_input_embeddings().weight.shape[0])
    record_sat_spec(model.config, spec)
    return spec
