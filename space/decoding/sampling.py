"""How tokens are chosen from logits: the `Sampler` every decoder draws through.

A `Sampler` binds the sampling options (greedy, or temperature, then top-k, then top-p: HF's order) to the
call's generator, so the AR baseline, the drafts and the verification all use one definition of "the
model's distribution" and one stream of random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """`[..., V]` logits -> `[..., V]` fp32 probabilities after temperature, top-k and top-p filtering."""
    scores = logits.float() / temperature
    if temperature < 1 and scores.numel() and bool(torch.isposinf(scores.amax())):
        # A temperature this small pushes finite logits past fp32's range, and softmax's inf - inf is NaN;
        # shifting each row by its largest logit first gives the same distribution, in range.
        shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)
        scores = shifted / temperature
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


@dataclass(frozen=True)
class Sampler:
    """Greedy (`do_sample=False`: the argmax) or sampling from `probabilities` with `generator`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @classmethod
    def of(cls, options, generator: torch.Generator | None = None) -> "Sampler":
        """The sampler `options` (a `DecodeOptions`) describe, drawing from `generator`."""
        return cls(options.do_sample, options.temperature, options.top_k, options.top_p, generator)

    def settings(self) -> dict:
        """The filtering options by name (what HF's `GenerationConfig` takes)."""
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """`[..., V]` logits -> the distribution sampling draws from."""
        return probabilities(logits, self.temperature, self.top_k, self.top_p)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One draw per row of `[..., V]` probabilities -> `[...]` long."""
        return sample(probs, self.generator)

    def draw(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`[..., V]` logits -> the chosen ids `[...]` and, when sampling, the distributions `[..., V]` they were
        drawn from (None for the argmax)."""
        if not self.do_sample:
            return logits.argmax(dim=-1), None
        q = self.probabilities(logits)
        return self.sample(q), q

    def pick(self, logits: torch.Tensor) -> int:
        """One token from `[V]` logits: the argmax, or one draw."""
        return int(self.draw(logits)[0])
