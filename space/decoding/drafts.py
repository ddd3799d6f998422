"""The draft container every speculative method proposes tokens in.

A `Drafts` is a run of tokens proposed to follow some point of the text, the distributions they were drawn
from (None where they were chosen outright: an argmax, a runner-up, a copy) and where they came from. SPACE's
candidate tree is built from several of them (`space.decoding.tree_shape`): the chain its mask slots drafted,
each slot's runners-up beside it, and copies from the context after any prefix of the chain; self-speculative
decoding's layer-skipped drafts and SDSAT's adaptive-token drafts are one each. The acceptance rules
(`space.decoding.verify`) read the tokens and `q`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Who proposed the tokens: SPACE's mask slots ("chain"), a slot's runner-up ("topk"), the context ("copy"),
# the mask ids the paper's first step verifies in the candidate slots ("masks"), self_spec's layer-skipped
# forward ("layers"), SDSAT's adaptive tokens ("sat").
ORIGINS = ("chain", "topk", "copy", "masks", "layers", "sat")


@dataclass
class Drafts:
    """Tokens proposed after a point of the text; `q[i]` is the distribution `tokens[i]` was drawn from."""

    tokens: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None  # [len(tokens), V]; None: chosen outright (a one-hot proposal)
    origin: str = "chain"  # one of ORIGINS
    slot: int = 0  # chain, masks, topk: the mask slot of tokens[0] (slot i drafts i + 1 tokens ahead)
    rank: int = 0  # topk: 1 for a slot's best runner-up
    match: int = 0  # copy: how many context tokens the copied continuation follows (0: none matched)
    after: int = 0  # how many of the step's chain tokens come before these (0: right after the last committed)

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"unknown draft origin {self.origin!r}; one of {ORIGINS}")

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The tokens as a `[len]` LongTensor."""
        return torch.tensor(self.tokens, dtype=torch.long, device=device)
