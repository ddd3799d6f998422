"""Sliding-window attention in the masks the decoders build themselves.

Given no mask, an HF model builds its own causal mask, windowed where its config says so: AR, SDSAT's
chain path and every self_spec verification rely on that. SPACE's step layout, SDSAT's token tree and
self_spec's draft pass masks of their own instead, so they must apply the window too, or they diverge
from AR once the context outgrows it. This module is the one place that knows

* `layer_windows(config)`: the window of each decoder layer (None: full causal attention), read from
  `sliding_window`, `use_sliding_window` (Qwen2) and `layer_types` (Qwen2's `max_window_layers`, Gemma);
* `in_window`: transformers' rule (`masking_utils.sliding_window_overlay`): a query at position i sees
  a key at position j only if `i - j < window`;
* `AttentionMasks`: turns a bool pattern plus query and key positions into what the backbone takes: one
  4D additive mask when every layer has the same window, else a dict keyed by layer type
  (`{"full_attention": ..., "sliding_attention": ...}`, what transformers itself hands a model whose
  config has `layer_types`, see `masking_utils.create_masks_for_generate`). It is the one mask builder: the
  decoders' steps (`space.decoding.common.Model.mask`) and training batches (`batch_masks`) both use it.

Keys are placed by position: `CompactCache` keeps the committed tokens compacted at positions 0..n-1 and
never evicts windowed-out entries; the mask hides them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.errors import SpaceError

FULL, SLIDING = "full_attention", "sliding_attention"  # transformers' layer type names


def config_window(config) -> int | None:
    """The sliding window a config turns on, or None (a Qwen2 config may keep `sliding_window` with the window off)."""
    if getattr(config, "use_sliding_window", True) is False:
        return None
    window = getattr(config, "sliding_window", None)
    return None if window is None else int(window)


def layer_windows(config) -> tuple[int | None, ...]:
    """The attention window of each decoder layer (None: full causal attention).

    `layer_types` decides per layer where the config has it (as transformers' own mask builder does);
    otherwise every layer slides with the config's window (Mistral) or none does (LLaMA).
    """
    if getattr(config, "attention_chunk_size", None) is not None:  # Llama 4's chunked attention: another rule
        raise SpaceError(f"chunked attention (attention_chunk_size={config.attention_chunk_size}) is not supported: "
                         "the decoders apply full and sliding-window causal masks only")
    window = config_window(config)
    types = getattr(config, "layer_types", None)
    if types is None:
        return (window,) * config.num_hidden_layers
    unknown = sorted(set(types) - {FULL, SLIDING})
    if unknown:
        raise SpaceError(f"attention layer type(s) {unknown} in config.layer_types are not supported: the decoders "
                         f"apply {FULL!r} and {SLIDING!r} masks only")
    return tuple(window if kind == SLIDING else None for kind in types)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool pattern `[q, kv]` or `[B, 1, q, kv]` (True: may attend) -> additive float mask `[1, 1, q, kv]` or
    `[B, 1, q, kv]`: 0 where allowed, the dtype's minimum where blocked."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask if mask.dim() == 4 else mask[None, None]


def in_window(allowed: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
              window: int | None) -> torch.Tensor:
    """`allowed` `[..., q, kv]` restricted to keys less than `window` positions behind their query (HF's rule).

    Positions are `[..., q]` and `[..., kv]` (leading dimensions broadcast, e.g. a training batch)."""
    if window is None:
        return allowed
    distance = query_positions[..., :, None] - key_positions[..., None, :]
    return allowed & (distance < window)


@dataclass(frozen=True)
class AttentionMasks:
    """The masks one model's backbone takes: one per distinct layer window."""

    windows: tuple[int | None, ...]  # per decoder layer
    layer_types: tuple[str, ...] | None  # per decoder layer, only when layers differ: the dict's keys

    @classmethod
    def for_config(cls, config) -> "AttentionMasks":
        windows = layer_windows(config)
        mixed = len(set(windows)) > 1
        return cls(windows, tuple(config.layer_types) if mixed else None)

    @property
    def windowed(self) -> bool:
        """Whether some layer slides: only then does a query ever miss a causal key."""
        return any(window is not None for window in self.windows)

    def build(self, allowed: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
              dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
        """`allowed` `[q, kv]` or `[B, 1, q, kv]` (keys at `key_positions`, queries at `query_positions`,
        `[..., kv]` and `[..., q]` broadcasting against it) as the backbone's mask."""
        if self.layer_types is None:
            return additive_mask(in_window(allowed, query_positions, key_positions, self.windows[0]), dtype)
        masks = {}
        for kind, window in zip(self.layer_types, self.windows):
            if kind not in masks:
                masks[kind] = additive_mask(in_window(allowed, query_positions, key_positions, window), dtype)
        return masks


def batch_masks(pattern: torch.Tensor, positions: torch.Tensor, config, dtype: torch.dtype):
    """A training batch's bool pattern `[B, 1, L, L]` (the collator's, tokens at `positions` `[B, L]`) as the
    backbone's mask, windowed as decoding windows it: mask rows learn under the masks they will decode with."""
    positions = positions[:, None]  # [B, 1, L]: broadcasts against the pattern
    return AttentionMasks.for_config(config).build(pattern, positions, positions, dtype)


def layer_mask(mask, config, index: int):
    """Layer `index`'s mask out of `AttentionMasks.build` (self_spec's draft calls the attention modules itself)."""
    return mask[config.layer_types[index]] if isinstance(mask, dict) else mask
