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
    if new_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    if tokenizer.convert_tokens_to_ids(MASK_TOKEN.format(0)) != spec.mask_id and spec.mask_id >= first_free:
        raise SpaceError(f"tokenizer assigned an unexpected id to the mask token (wanted {spec.mask_id})")

    resize_and_init(model, new_ids=list(range(first_free, len(tokenizer))))
    record_mask_spec(model.config, spec)
    return spec


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
