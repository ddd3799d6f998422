"""Plain autoregressive decoding: one target forward per token, the baseline every method must match.

Uses the same backbone/lm_head path, KV cache and sampling code as the speculative methods, so a
comparison measures the method, not the plumbing.
"""

from __future__ import annotations

import torch

from space.cache import CompactCache
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, Model, Output, eos_ids, make_generator
from space.decoding.sampling import probabilities, sample


@torch.inference_mode()
def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    target = Model(model)
    input_ids = input_ids.to(target.device)
    out = Output(input_ids, options.max_new_tokens, eos_ids(model, options.eos_token_id))
    cache = CompactCache.for_model(target.model, out.ids.numel()) if options.use_cache else None
    generator = make_generator(options.seed, target.device) if options.do_sample else None
    stats = DecodeStats()

    while not out.finished:
        # 1. inputs: the whole sequence without a cache, else only what the cache has not seen
        start = cache.length if cache is not None else 0
        ids = out.committed()[start:]
        positions = torch.arange(start, out.length, device=target.device)
        # 2. one forward; logits of the last row only
        hidden = target.hidden(ids, positions, cache=cache)
        logits = target.logits(hidden[-1:])[0]  # [V]
        # 3. pick the next token
        if options.do_sample:
            token = int(sample(probabilities(logits, options.temperature, options.top_k, options.top_p), generator))
        else:
            token = int(logits.argmax())
        stats.record(out.append([token]))
    return out.result(stats)
