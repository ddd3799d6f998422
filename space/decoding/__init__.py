"""The decoder registry and the public entry point `decode`.

Each method is a plain function `generate(model, input_ids, options) -> DecodeResult` in a module
of its own; `DECODERS` maps method names to them.
"""

from __future__ import annotations

import torch

from space.decoding import ar, hf, sdsat, self_spec
from space.decoding import space as space_decoding
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, check_prompt
from space.errors import SpaceError

DECODERS = {
    "ar": ar.generate,
    "space": space_decoding.generate,
    "hf": hf.generate,
    "prompt_lookup": hf.generate_prompt_lookup,
    "self_spec": self_spec.generate,
    "sdsat": sdsat.generate,
}


def decode(model, input_ids: torch.Tensor, method: str = "space", **options) -> DecodeResult:
    """Generate from a `[1, n]` prompt with `method` (one of `DECODERS`).

    Options (see `DecodeOptions`): `max_new_tokens`, `eos_token_id`, `use_cache`, `do_sample`,
    `temperature`, `top_k`, `top_p`, `seed`; SPACE: `mask_num`, `mask_id`, `mask_diff` (default:
    the model config) and `sampling_mode` ("exact" or "original"); self_spec: `skip_layers` (required),
    `max_draft`, `draft_threshold`, `adaptive_threshold`, `auto_parameters`, `threshold_state`; sdsat:
    `sat_num`, `sat_id` (default: the model config) and `sampling_mode` ("exact" or the reference's tree, "original").
    """
    if method not in DECODERS:
        raise SpaceError(f"unknown method {method!r}; available: {sorted(DECODERS)}")
    parsed = DecodeOptions.from_kwargs(method, options)
    check_prompt(model, input_ids)
    return DECODERS[method](model, input_ids, parsed)


__all__ = ["DECODERS", "DecodeOptions", "DecodeResult", "DecodeStats", "decode"]
