"""A preallocated KV cache that can drop and compact entries in place, and the name it is passed under.

This is the one module that implements the transformers Cache API (`space.decoding.hf` only reads a
cache's length). transformers 5.24 renamed the forward
argument `past_key_values` to `cache` (the old name is accepted through a shim until 5.40); a cache
passed under a name the model does not take would be silently ignored, so `cache_kwargs` reads the
name off the module's own signature and `passed_cache` reads either name back. Speculative decoders feed a chunk of
drafted tokens, then keep only the entries of the accepted ones. `DynamicCache` would force a copy
of the whole cache on every step (and refuses `crop(n > 0)` in transformers 5), so each layer here
owns a buffer of fixed capacity, `update` writes the new chunk after the live prefix, and

* `truncate(length)` forgets everything after `length` (self-speculative decoding, SDSAT);
* `compact(prefix, sources)` keeps `[0, prefix)` and moves the entries at `sources` right after it
  (SPACE: the committed tokens plus the accepted candidates that sit between mask groups).

Both touch only the moved entries, never the whole cache. Buffers grow by doubling when a step would
overflow them, so a caller's capacity estimate is a hint, not a limit.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer

CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")  # transformers >= 5.24, then 5.0 - 5.23


@functools.lru_cache(maxsize=None)
def _cache_argument(forward_type: type, forward_function) -> str:
    parameters = inspect.signature(forward_function).parameters  # follows the deprecation wrapper
    for name in CACHE_ARGUMENT_NAMES:
        if name in parameters:
            return name
    raise TypeError(f"{forward_type.__name__}.forward takes no KV cache argument (looked for {CACHE_ARGUMENT_NAMES})")


def cache_argument(module) -> str:
    """The keyword under which `module.forward` takes its KV cache: `cache` or `past_key_values`."""
    return _cache_argument(type(module), type(module).forward)


def cache_kwargs(module, cache) -> dict:
    """`{name: cache}` for a call of `module`, under the name its forward takes."""
    return {cache_argument(module): cache}


def passed_cache(kwargs: dict):
    """The cache in a forward's keyword arguments under either name, or None."""
    for name in CACHE_ARGUMENT_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


class CompactLayer(DynamicLayer):
    """One layer's keys and values in buffers `[batch, heads, capacity, head_dim]`; `length` are live."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.key_buffer = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_empty(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        self._ensure_capacity(end)
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def compact(self, prefix: int, sources: torch.Tensor) -> None:
        moved = sources.numel()
        if moved:
            # Advanced indexing reads a copy first, so overlapping source and target ranges are safe.
            self.key_buffer[:, :, prefix : prefix + moved] = self.key_buffer[:, :, sources]
            self.value_buffer[:, :, prefix : prefix + moved] = self.value_buffer[:, :, sources]
        self.length = prefix + moved

    def crop(self, tokens_to_remove: int) -> None:
        self.truncate(self.length - abs(tokens_to_remove))

    def reset(self) -> None:
        self.length = 0


class CompactCache(Cache):
    """A transformers `Cache` of `CompactLayer`s, one per decoder layer."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[CompactLayer(capacity) for _ in range(num_layers)])

    @classmethod
    def for_model(cls, model, capacity: int) -> "CompactCache":
        return cls(model.config.num_hidden_layers, capacity)

    @property
    def length(self) -> int:
        return self.layers[0].length

    def truncate(self, length: int) -> None:
        """Forget every entry at index >= `length`."""
        for layer in self.layers:
            layer.truncate(length)

    def compact(self, prefix: int, sources: torch.Tensor | list[int]) -> None:
        """Keep entries `[0, prefix)`, then the entries at `sources` (all >= prefix), in that order."""
        if not isinstance(sources, torch.Tensor):
            sources = torch.tensor(sources, dtype=torch.long)
        for layer in self.layers:
            if layer.is_initialized:
                layer.compact(prefix, sources.to(layer.device))
