"""CompactCache: in-place truncate/compact give the same attention results as recomputing; every decoder's
cache reaches the model under the argument name the installed transformers takes."""

import inspect

import pytest
import torch

import space
import space.decoding.skip_layers
from space.cache import CompactCache, cache_argument, cache_kwargs, passed_cache
from space.decoding import common
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


# --- the cache reaches the model under the name it takes ---------------------------------------




class AttentionAudit:
    """Hooks every attention module: each cached call must get the decoder's `CompactCache` and grow
    its own layer by exactly the rows fed (the model's own cache, or none, means ours went unused)."""

    def __init__(self, model):
        self.handles, self.calls, self.failures = [], 0, []
        for module in model.modules():
            if hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
                self.handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
                self.handles.append(module.register_forward_hook(self._after, with_kwargs=True))
        assert self.handles, "no attention module found"

    def _before(self, module, args, kwargs):
        cache = passed_cache(kwargs)
        if not isinstance(cache, CompactCache):
            self.failures.append(f"layer {module.layer_idx} got {type(cache).__name__}, not the CompactCache")
            module._audit = None
            return
        module._audit = (cache, cache.layers[module.layer_idx].length)

    def _after(self, module, args, kwargs, output):
        self.calls += 1
        if module._audit is None:
            return
        cache, before = module._audit
        rows = kwargs.get("hidden_states", args[0] if args else None).shape[-2]
        after = cache.layers[module.layer_idx].length
        if after != before + rows:
            self.failures.append(f"layer {module.layer_idx}: cache length {before} -> {after} after {rows} rows")

    def close(self):
        for handle in self.handles:
            handle.remove()


METHOD_OPTIONS = {
    "ar": {},
    "space": {},
    "sdsat": {},
    "self_spec": dict(skip_layers={"attention": [1], "mlp": [0]}, draft_threshold=0.0),
}


def audited_decode(method, sampling=False):
    model = tiny_llama(seed=4, num_layers=3, sat_num=3 if method == "sdsat" else None)
    prompt = torch.randint(3, 80, (1, 9), generator=torch.Generator().manual_seed(4))
    audit = AttentionAudit(model)
    try:
        options = dict(do_sample=True, seed=1, top_k=5) if sampling else {}
        space.decode(model, prompt, method, max_new_tokens=12, eos_token_id=[], use_cache=True,
                     **METHOD_OPTIONS[method], **options)
    finally:
        audit.close()
    return audit


@pytest.mark.parametrize("sampling", [False, True])
@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_every_cached_forward_writes_the_decoders_cache(method, sampling):
    audit = audited_decode(method, sampling)
    assert audit.calls > 0
    assert audit.failures == []


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_the_audit_fails_when_the_cache_is_not_passed(monkeypatch, method):
    """As under a transformers that no longer takes the name we pass: the model builds its own cache."""
    monkeypatch.setattr(common, "cache_kwargs", lambda module, cache: {})
    monkeypatch.setattr(space.decoding.skip_layers, "cache_kwargs", lambda module, cache: {})
    assert audited_decode(method).failures


class _NewName(torch.nn.Module):
    def forward(self, input_ids, cache=None):
        return cache


class _OldName(torch.nn.Module):
    def forward(self, input_ids, past_key_values=None):
        return past_key_values


def test_cache_argument_is_read_off_the_signature():
    assert cache_argument(_NewName()) == "cache"
    assert cache_argument(_OldName()) == "past_key_values"
    marker = object()
    assert _NewName()(None, **cache_kwargs(_NewName(), marker)) is marker
    assert _OldName()(None, **cache_kwargs(_OldName(), marker)) is marker
    with pytest.raises(TypeError, match="takes no KV cache argument"):
        cache_argument(torch.nn.Linear(2, 2))


def test_installed_llama_takes_the_name_we_pass():
    backbone = tiny_llama(seed=0).get_decoder()
    assert cache_argument(backbone) in inspect.signature(backbone.forward).parameters
    assert cache_argument(backbone.layers[0].self_attn) in \
        inspect.signature(backbone.layers[0].self_attn.forward).parameters


def test_passed_cache_reads_either_name():
    marker = object()
    assert passed_cache({"cache": marker}) is marker
    assert passed_cache({"past_key_values": marker}) is marker
    assert passed_cache({"cache": None, "past_key_values": marker}) is marker
    assert passed_cache({}) is None
