"""CompactCache: in-place truncate/compact give the same attention results as recomputing."""

import torch

from space.cache import CompactCache
from space.decoding.common import Model
from space.testing import tiny_llama


def forward(target, ids, cache):
    start = cache.length if cache is not None else 0
    positions = torch.arange(start, start + ids.numel())
    with torch.no_grad():
        return target.logits(target.hidden(ids, positions, cache=cache))


def test_compact_keeps_prefix_and_moves_sources():
    model = tiny_llama(seed=1)
    target = Model(model)
    ids = torch.randint(3, 80, (12,))
    cache = CompactCache.for_model(model, capacity=4)  # small on purpose: forces growth
    forward(target, ids, cache)
    assert cache.length == 12
    before = [layer.keys.clone() for layer in cache.layers]
    cache.compact(5, [7, 10])
    assert cache.length == 7
    for layer, old in zip(cache.layers, before):
        assert torch.equal(layer.key_buffer[:, :, :5], old[:, :, :5])
        assert torch.equal(layer.key_buffer[:, :, 5:7], old[:, :, [7, 10]])


def test_truncated_cache_continues_like_a_fresh_one():
    model = tiny_llama(seed=2)
    target = Model(model)
    ids = torch.randint(3, 80, (10,))
    cache = CompactCache.for_model(model, capacity=64)
    forward(target, ids, cache)
    cache.truncate(6)
    continued = forward(target, ids[6:8], cache)
    fresh = forward(target, ids[:8], None)[-2:]
    assert torch.allclose(continued, fresh, atol=1e-5)
