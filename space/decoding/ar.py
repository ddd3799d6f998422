"""Plain autoregressive decoding: one target forward per token, the baseline every method must match.

Uses the same backbone/lm_head path, KV cache and sampling code as the speculative methods, so a
comparison measures the method, not the plumbing. Its options are the shared `DecodeOptions`. Each prompt is
a row of the batch loop (`space.decoding.batch`): one prompt or many, the same step.
"""

from __future__ import annotations

import torch

from space.decoding.batch import run_rows
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Run


class ArRow:
    """One prompt's AR step: feed what the cache has not seen, pick the next token from the last row's logits."""

    def __init__(self, target: Model, input_ids: torch.Tensor, options: DecodeOptions):
        self.run = Run.start(target, input_ids, options, DecodeStats(), own_cache=False)

    @property
    def finished(self) -> bool:
        return self.run.finished

    def plan(self) -> None:
        return None

    def feed(self, seen: int, tree=None):
        # 1. one forward over what the cache has not seen (the whole sequence without a cache); logits of the last
        #    row only
        inputs = self.run.inputs(seen)
        return inputs, inputs.ids.shape[0] - 1

    def take(self, hidden: torch.Tensor, logits: torch.Tensor) -> None:
        # 2. pick the next token and commit it; the cache keeps everything fed
        self.run.commit([self.run.sampler.pick(logits[0])])
        return None


def generate_batch(model, prompts: list[torch.Tensor], options: list[DecodeOptions],
                   batch_size: int | None = None) -> list[DecodeResult]:
    """AR for every prompt (`[1, n_i]` each, with its own options: seed, budget) in one forward per step, at most
    `batch_size` at once (`space.decoding.batch.run_rows`)."""
    target = Model(model)
    rows = [ArRow(target, prompt, row_options) for prompt, row_options in zip(prompts, options)]
    run_rows(target, rows, options[0].use_cache, max(row.run.out.ids.numel() for row in rows), batch_size=batch_size)
    return [row.run.result() for row in rows]


def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    return generate_batch(model, [input_ids], [options])[0]
