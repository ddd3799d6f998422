"""Plain autoregressive decoding: one target forward per token, the baseline every method must match.

Uses the same backbone/lm_head path, KV cache and sampling code as the speculative methods, so a
comparison measures the method, not the plumbing. Its options are the shared `DecodeOptions`.
"""

from __future__ import annotations

import torch

from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Run
from space.decoding.sampling import probabilities, sample


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    run = Run.start(Model(model), input_ids, options, DecodeStats())
    while not run.finished:
        # 1. inputs: only what the cache has not seen (the whole sequence without a cache)
        ids, positions = run.unseen()
        # 2. one forward; logits of the last row only
        hidden = run.target.hidden(ids, positions, cache=run.cache)
        logits = run.target.logits(hidden[-1:])[0]  # [V]
        # 3. pick the next token and commit it
        if options.do_sample:
            token = int(sample(probabilities(logits, options.temperature, options.top_k, options.top_p), run.generator))
        else:
            token = int(logits.argmax())
        run.commit([token])
    return run.result()
