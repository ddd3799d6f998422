"""space: lossless single-model speculative decoding (SPACE and friends) for LLaMA-family models.

    import space
    model, tokenizer = space.load_model()      # the shipped SPACE model: SmolLM2-135M-Instruct + trained masks
    ids = tokenizer("def fib(n):", return_tensors="pt").input_ids
    out = model.generate(ids, custom_generate=space.CUSTOM_GENERATE, trust_remote_code=True, max_new_tokens=64)
    result = space.decode(model, ids, method="space", max_new_tokens=64)
    print(tokenizer.decode(result.tokens), result.stats.mean_tokens_per_step)
    results = space.decode_batch(model, [ids[0], other_ids[0]], method="space")   # many prompts, one forward a step

A base model without mask tokens (e.g. `space.load_model("smollm2")`) gets them from
`space.add_mask_tokens(...)` before training (`space.training.train`); decoding with untrained masks
is still lossless, but few drafts are accepted.

Layout: this folder is the spine (errors, io, cli, models, tokens, cache, window, weights, testing);
`space.decoding` holds the decoders, `space.kernels` the CPU fast paths, `space.adapters` the model add-ons
(gated adapters, the sampler head), `space.training` SAR-SFT training, `space.eval` the evaluation harness and
`space.bench` the measurements behind the benchmark scripts.
"""

from pathlib import Path

from space.decoding import DECODERS, DecodeOptions, DecodeResult, DecodeStats, decode, decode_batch
from space.errors import SpaceError, SpaceWarning
from space.models import default_model_path, load_model
from space.tokens import MaskSpec, SatSpec, add_mask_tokens, add_sat_tokens, read_mask_spec, read_sat_spec

# the folder `model.generate(custom_generate=...)` loads (`custom_generate/generate.py`, see its README.md)
CUSTOM_GENERATE = str(Path(__file__).resolve().parent / "hub")

__all__ = [
    "CUSTOM_GENERATE",
    "DECODERS",
    "DecodeOptions",
    "DecodeResult",
    "DecodeStats",
    "MaskSpec",
    "SatSpec",
    "SpaceError",
    "SpaceWarning",
    "add_mask_tokens",
    "add_sat_tokens",
    "decode",
    "decode_batch",
    "default_model_path",
    "load_model",
    "read_mask_spec",
    "read_sat_spec",
]
