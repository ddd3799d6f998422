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

A batch keeps one length per row (`space.decoding.batch`): row r's live entries are `[0, lengths[r])`, a forward
writes row r's chunk right after them (`set_row_lengths` first), and `compact_rows` keeps each row's own
accepted entries with one gather and one scatter per layer, whatever the batch. Rows never move to realign with
each other; the decoders' masks hide every column past a row's own entries. `keep_rows` drops finished rows.
With one row (or equal lengths) every operation is the plain one above.
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
    """One layer's keys and values in buffers `[batch, heads, capacity, head_dim]`; row r's first `lengths[r]`
    entries are live (`length`: the longest row's)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self.lengths: list[int] = [0]
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return max(self.lengths, default=0)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        # zeros, not new_empty: a batch's mask hides the columns past a row's own entries, but a hidden column that
        # held NaN from uninitialised memory would still make the attention NaN (0 * NaN)
        self.key_buffer = key_states.new_zeros(*key_states.shape[:2], self.capacity, key_states.shape[-1])
        self.value_buffer = value_states.new_zeros(*value_states.shape[:2], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _ensure_capacity(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        fed = key_states.shape[-2]
        if len(self.lengths) != key_states.shape[0]:
            raise ValueError(f"the cache holds {len(self.lengths)} rows, the forward feeds {key_states.shape[0]}")
        start, end = min(self.lengths), self.length + fed
        self._ensure_capacity(end)
        if start == self.length:  # one row, or rows of one length: one slice
            self.key_buffer[:, :, start:end] = key_states
            self.value_buffer[:, :, start:end] = value_states
        else:  # each row's chunk right after its own entries
            index = torch.tensor(self.lengths, device=self.device)[:, None] + torch.arange(fed, device=self.device)
            index = index[:, None, :, None].expand(-1, key_states.shape[1], -1, key_states.shape[-1])
            self.key_buffer.scatter_(2, index, key_states)
            self.value_buffer.scatter_(2, index, value_states)
        self.lengths = [length + fed for length in self.lengths]
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def truncate(self, length: int) -> None:
        self.lengths = [min(row, length) for row in self.lengths]

    def compact(self, prefix: int, sources: torch.Tensor) -> None:
        moved = sources.numel()
        if moved:
            # Advanced indexing reads a copy first, so overlapping source and target ranges are safe.
            self.key_buffer[:, :, prefix : prefix + moved] = self.key_buffer[:, :, sources]
            self.value_buffer[:, :, prefix : prefix + moved] = self.value_buffer[:, :, sources]
        self.lengths = [prefix + moved] * len(self.lengths)

    def compact_rows(self, prefixes: list[int], sources: torch.Tensor, moved: list[int]) -> None:
        """Row r keeps `[0, prefixes[r])`, then its entries at `sources[r, :moved[r]]` (`sources` `[B, M]`, padded
        with each row's own targets, which copy onto themselves)."""
        if sources.shape[1]:
            self._ensure_capacity(max(prefixes) + sources.shape[1])
            targets = torch.tensor(prefixes, device=self.device)[:, None] + torch.arange(sources.shape[1],
                                                                                         device=self.device)
            shape = (-1, self.key_buffer.shape[1], -1, self.key_buffer.shape[-1])
            sources, targets = sources[:, None, :, None].expand(shape), targets[:, None, :, None].expand(shape)
            for name in ("key_buffer", "value_buffer"):
                buffer = getattr(self, name)
                buffer.scatter_(2, targets, buffer.gather(2, sources))  # gather copies first: overlaps are safe
        self.lengths = [prefix + count for prefix, count in zip(prefixes, moved)]

    def replace_row(self, row: int, other: "CompactLayer") -> None:
        """Row `row` becomes `other`'s only row (a prompt prefilled on its own takes a finished row's place)."""
        length = other.lengths[0]
        if length:
            if not self.is_initialized:
                raise ValueError("a row with entries cannot join a cache that has never been fed")
            self._ensure_capacity(length)
            self.key_buffer[row, :, :length] = other.key_buffer[0, :, :length]
            self.value_buffer[row, :, :length] = other.value_buffer[0, :, :length]
        self.lengths[row] = length

    def keep_rows(self, rows: list[int]) -> None:
        if self.is_initialized:
            index = torch.tensor(rows, dtype=torch.long, device=self.device)
            self.key_buffer = self.key_buffer.index_select(0, index)
            self.value_buffer = self.value_buffer.index_select(0, index)
        self.lengths = [self.lengths[row] for row in rows]

    def crop(self, tokens_to_remove: int) -> None:
        self.truncate(self.length - abs(tokens_to_remove))

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)


class CompactCache(Cache):
    """A transformers `Cache` of `CompactLayer`s, one per decoder layer."""

    def __init__(self, num_layers: int, capacity: int, rows: int = 1):
        super().__init__(layers=[CompactLayer(capacity) for _ in range(num_layers)])
        self.set_row_lengths([0] * rows)

    @classmethod
    def for_model(cls, model, capacity: int, rows: int = 1) -> "CompactCache":
        return cls(model.config.num_hidden_layers, capacity, rows)

    @property
    def length(self) -> int:
        """The live entries (of the longest row, in a batch)."""
        return self.layers[0].length

    @property
    def row_lengths(self) -> list[int]:
        return list(self.layers[0].lengths)

    def set_row_lengths(self, lengths: list[int]) -> None:
        """Each row's live entries (never more than it holds): the next forward writes row r after `lengths[r]`."""
        for layer in self.layers:
            layer.lengths = list(lengths)

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows of the batch, in this order (finished sequences leave the batch)."""
        for layer in self.layers:
            layer.keep_rows(rows)

    def replace_row(self, row: int, other: "CompactCache") -> None:
        """Row `row` of the batch becomes the one row of `other` (a waiting prompt, prefilled on its own, takes a
        finished row's place: nothing else moves)."""
        for layer, joining in zip(self.layers, other.layers):
            layer.replace_row(row, joining)

    def compact_rows(self, keeps: list[tuple[int, torch.Tensor]]) -> None:
        """Per row `(prefix, sources)`: keep entries `[0, prefix)`, then those at `sources` (all >= prefix), in that
        order; every row in one gather and one scatter per layer."""
        if len(keeps) == 1:
            self.compact(*keeps[0])
            return
        device = self.layers[0].device if self.layers[0].is_initialized else None
        moved = [int(sources.numel()) for _, sources in keeps]
        width = max(moved)
        padded = torch.empty(len(keeps), width, dtype=torch.long)
        for row, ((prefix, sources), count) in enumerate(zip(keeps, moved)):
            padded[row, :count] = sources.cpu()
            padded[row, count:] = torch.arange(prefix + count, prefix + width)  # onto itself
        prefixes = [prefix for prefix, _ in keeps]
        for layer in self.layers:
            if layer.is_initialized:
                layer.compact_rows(prefixes, padded.to(device), moved)
            else:
                layer.lengths = [prefix + count for prefix, count in zip(prefixes, moved)]

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
