"""Copies derived from a model's weights, kept until the weights change.

Several fast paths keep tensors computed from weights: a prepacked or transposed copy of a linear layer's
weight and the fused q/k/v and gate/up weights (the CPU kernels), a gated adapter's stacked factors, an fp32
copy of a half-precision lm_head (the decoders). `derived` keeps each in a dict its owner holds and takes it
again when a source is replaced (another storage) or changed in place (another version), or changes shape,
dtype or device: a resize, `load_state_dict` or an optimizer step is never served a stale copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

T = TypeVar("T")
KEYS = "_derived_keys"  # store[KEYS][name]: what store[name] was made from


def derived(store: dict, name: str, sources: Sequence[torch.Tensor], make: Callable[[], T], *settings) -> T:
    """`store[name]`, made by `make()` on first use and again whenever a tensor of `sources` or one of `settings`
    (anything else the copy depends on, such as a layout choice) is not what it was made from (`store[KEYS]`
    records that; a storage's address also tells its device). Made as a normal tensor outside inference mode, so
    it can be used (and its version read) in and out of it."""
    key = (settings, *((t.data_ptr(), t._version, tuple(t.shape), t.dtype) for t in sources))
    keys = store.setdefault(KEYS, {})
    if keys.get(name) != key or name not in store:
        with torch.inference_mode(False), torch.no_grad():
            store[name] = make()
        keys[name] = key
    return store[name]
