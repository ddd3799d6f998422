"""space: lossless single-model speculative decoding (SPACE and friends) for LLaMA-family models.

    import space
    model, tokenizer = space.load_model()                      # SmolLM2-135M-Instruct from its GGUF
    space.add_mask_tokens(model, tokenizer, mask_num=3)        # untrained masks: lossless, just slow
    ids = tokenizer("def fib(n):", return_tensors="pt").input_ids
    result = space.decode(model, ids, method="space", max_new_tokens=64)
    print(tokenizer.decode(result.tokens), result.stats.mean_tokens_per_step)
"""

from space.decoding import DECODERS, DecodeOptions, DecodeResult, DecodeStats, decode
from space.errors import SpaceError
from space.models import default_model_path, load_model
from space.tokens import MaskSpec, SatSpec, add_mask_tokens, add_sat_tokens, read_mask_spec, read_sat_spec

__all__ = [
    "DECODERS",
    "DecodeOptions",
    "DecodeResult",
    "DecodeStats",
    "MaskSpec",
    "SatSpec",
    "SpaceError",
    "add_mask_tokens",
    "add_sat_tokens",
    "decode",
    "default_model_path",
    "load_model",
    "read_mask_spec",
    "read_sat_spec",
]
