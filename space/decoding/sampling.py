"""Turn logits into the sampling distribution: temperature, then top-k, then top-p (HF's order).

Every method samples through `probabilities` so that the AR baseline, the drafts and the
verification all use one definition of "the model's distribution".
"""

from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """`[..., V]` logits -> `[..., V]` fp32 probabilities after temperature, top-k and top-p filtering."""
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # [..., 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)  # [..., V]
        sorted_probs = sorted_scores.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of strictly better tokens
        drop_sorted = mass_before >= top_p  # keep the smallest prefix reaching top_p (at least one token)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores.softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row of `[..., V]` probabilities -> `[...]` long."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def draft_picker(do_sample: bool, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None):
    """How a drafter chooses a slot's token from its logits `[V]`: argmax, or one draw from `probabilities`."""
    if not do_sample:
        return lambda logits: int(logits.argmax())
    return lambda logits: int(sample(probabilities(logits, temperature, top_k, top_p), generator))
