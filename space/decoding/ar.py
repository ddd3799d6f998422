"""Plain autoregressive decoding: one target forward per token, the baseline every method must match.

Uses the same backbone/lm_head path, KV cache and sampling code as the speculative methods, so a
comparison measures the method, not the plumbing. Its options are the shared `DecodeOptions`.
"""

from __future__ import annotations

import torch

from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Run


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    run = Run.start(Model(model), input_ids, options, DecodeStats())
    while not run.finished:
        # 1-2. one forward over what the cache has not seen (the whole sequence without a cache); logits of the
        #      last row only
        hidden = run.forward()
        logits = run.target.logits(hidden[-1:])[0]  # [V]
        # 3. pick the next token and commit it
        run.commit([run.sampler.pick(logits)])
    return run.result()
