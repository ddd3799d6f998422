"""`space.kernels.lean_layers`: the lean LLaMA layer computes what transformers' layer does, and decoders stay
lossless on it."""

import copy
import inspect

import pytest
import torch
from torch import nn
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

import space
from space.cache import CompactCache
from space.kernels.lean_layers import LeanLlamaDecoderLayer, use_lean_layers
from space.testing import tiny_llama, tiny_tokenizer

# Logits of these tiny models reach about 6.6 (hidden states are of the same scale); the fused products sum in another
# order than F.linear, which left differences up to 1.7e-5 (35 ulp at that scale) on an Intel Xeon with AMX where an
# AMD EPYC stayed under 1e-5. A wrong mask, position or rotary sign moves logits by 1e-1 or more.
TOLERANCE = dict(rtol=1e-5, atol=1e-4)


def lean_twin(plain):
    lean = copy.deepcopy(plain)
    assert use_lean_layers(lean) == plain.config.num_hidden_layers
    assert all(type(layer) is LeanLlamaDecoderLayer for layer in lean.model.layers)
    return lean


def tiny(seed=0, attn="sdpa", **kwargs):
    model = tiny_llama(seed=seed, **kwargs)
    model.set_attn_implementation(attn)
    return model


def ids(seed, length, vocab=88):
    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


def test_the_lean_forward_takes_the_installed_layer_signature():
    lean, installed = (inspect.signature(c.forward).parameters for c in (LeanLlamaDecoderLayer, LlamaDecoderLayer))
    assert list(lean) == list(installed)
    assert [p.default for p in lean.values()] == [p.default for p in installed.values()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("num_kv_heads", [2, 4])  # GQA and MHA
def test_a_full_prompt_gives_the_plain_model_output(attn, num_kv_heads):
    plain = tiny(1, attn, num_kv_heads=num_kv_heads)
    lean = lean_twin(plain)
    prompt = ids(1, 13)
    with torch.inference_mode():
        expected, got = plain(prompt, output_hidden_states=True), lean(prompt, output_hidden_states=True)
    torch.testing.assert_close(got.hidden_states[-1], expected.hidden_states[-1], **TOLERANCE)
    torch.testing.assert_close(got.logits, expected.logits, **TOLERANCE)
    assert "_fused_weights" in vars(lean.model.layers[0])  # the lean forward ran


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("make_cache", [lambda model: CompactCache.for_model(model, 4),
                                        lambda model: DynamicCache(config=model.config)], ids=["compact", "dynamic"])
def test_cached_steps_of_one_and_several_rows_give_the_plain_model_output(attn, make_cache):
    plain = tiny(2, attn)
    lean = lean_twin(plain)
    sequence = ids(2, 20)
    caches = make_cache(plain), make_cache(lean)
    start = 0
    with torch.no_grad():
        for rows in (6, 1, 1, 4, 1, 7):  # prefill, then one-row and multi-row steps
            chunk = sequence[:, start : start + rows]
            expected, got = (model(chunk, cache=cache, use_cache=True).logits
                             for model, cache in zip((plain, lean), caches))
            torch.testing.assert_close(got, expected, **TOLERANCE)
            start += rows
    assert caches[1].get_seq_length() == caches[0].get_seq_length() == 20


def random_mask(seed, rows, past, dtype=torch.float32, blocked=float("-inf")):
    """`[1, 1, rows, past + rows]`: causal, with random extra keys blocked (each row keeps itself)."""
    generator = torch.Generator().manual_seed(seed)
    keys = past + rows
    allowed = torch.arange(keys)[None, :] <= past + torch.arange(rows)[:, None]
    allowed &= torch.rand(rows, keys, generator=generator) < 0.7
    allowed[torch.arange(rows), past + torch.arange(rows)] = True
    return torch.zeros(rows, keys, dtype=dtype).masked_fill_(~allowed, blocked)[None, None]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("blocked", [float("-inf"), torch.finfo(torch.float32).min])
def test_a_custom_4d_mask_with_explicit_positions_gives_the_plain_model_output(attn, blocked):
    plain = tiny(3, attn)
    lean = lean_twin(plain)
    prompt, chunk = ids(3, 9), ids(4, 6)
    caches = CompactCache.for_model(plain, 16), CompactCache.for_model(lean, 16)
    with torch.no_grad():
        for model, cache in zip((plain, lean), caches):
            model(prompt, cache=cache, use_cache=True)
        # SPACE-like chunk: positions that repeat, a mask that hides some earlier rows
        positions = torch.tensor([[9, 10, 10, 11, 11, 12]])
        mask = random_mask(5, 6, past=9, blocked=blocked)
        expected, got = (model(chunk, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
                         for model, cache in zip((plain, lean), caches))
        torch.testing.assert_close(got, expected, **TOLERANCE)
        no_cache = [model(prompt, attention_mask=random_mask(6, 9, past=0, blocked=blocked)).logits
                    for model in (plain, lean)]
        torch.testing.assert_close(no_cache[1], no_cache[0], **TOLERANCE)


def test_sdpa_bool_and_per_head_masks_give_the_plain_model_output():
    """A bool mask, and a per-head mask on one row (the packed-GQA path reshapes it)."""
    plain = tiny(4, "sdpa")
    lean = lean_twin(plain)
    prompt = ids(7, 8)
    bool_mask = random_mask(8, 8, past=0) == 0
    head_mask = random_mask(9, 1, past=7).expand(1, plain.config.num_attention_heads, 1, 8).clone()
    head_mask[:, 1, :, 2] = float("-inf")  # the heads differ
    caches = CompactCache.for_model(plain, 8), CompactCache.for_model(lean, 8)
    with torch.no_grad():
        expected, got = (model(prompt, attention_mask=bool_mask).logits for model in (plain, lean))
        torch.testing.assert_close(got, expected, **TOLERANCE)
        for model, cache in zip((plain, lean), caches):
            model(prompt[:, :7], cache=cache, use_cache=True)
        expected, got = (model(prompt[:, 7:], attention_mask=head_mask, position_ids=torch.tensor([[7]]), cache=cache,
                               use_cache=True).logits for model, cache in zip((plain, lean), caches))
        torch.testing.assert_close(got, expected, **TOLERANCE)


def test_the_cache_is_taken_under_either_keyword():
    plain = tiny(5)
    lean = lean_twin(plain)
    hidden = torch.randn(1, 4, plain.config.hidden_size)
    position_embeddings = plain.model.rotary_emb(hidden, position_ids=torch.arange(4)[None])
    caches = CompactCache.for_model(plain, 8), CompactCache.for_model(lean, 8)
    with torch.no_grad():
        expected = plain.model.layers[0](hidden, position_embeddings=position_embeddings, cache=caches[0])
        got = lean.model.layers[0](hidden, position_embeddings=position_embeddings, past_key_values=caches[1])
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert caches[1].layers[0].length == caches[0].layers[0].length == 4


@pytest.mark.parametrize("seed", range(3))
def test_decoders_on_lean_layers_give_the_plain_ar_tokens(seed):
    plain = tiny_llama(seed=seed)
    lean = lean_twin(plain)
    part = ids(seed, 4, vocab=plain.config.vocab_size - 8)
    prompt = torch.cat([part, ids(seed + 10, 2), part], dim=1)  # a repeat, so prompt lookup drafts
    reference = space.decode(plain, prompt, "ar", max_new_tokens=24, eos_token_id=[]).tokens.tolist()
    runs = [("ar", {}), ("space", {}), ("space", {"use_cache": False}), ("hf", {}), ("prompt_lookup", {})]
    for method, options in runs:
        result = space.decode(lean, prompt, method, max_new_tokens=24, eos_token_id=[], **options)
        assert result.tokens.tolist() == reference, (method, options)
    assert "_fused_weights" in vars(lean.model.layers[0])  # the lean forward ran


def test_with_gradients_the_original_forward_gives_the_same_gradients():
    plain = tiny(6)
    lean = lean_twin(plain)
    sequence = ids(6, 10)
    for model in (plain, lean):
        model(sequence, labels=sequence).loss.backward()
    for (name, expected), got in zip(plain.named_parameters(), lean.parameters()):
        assert got.grad is not None, name
        torch.testing.assert_close(got.grad, expected.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("architecture", ["mistral", "qwen2"])
def test_other_architectures_are_left_untouched(architecture):
    model = tiny_llama(seed=7, architecture=architecture)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    classes = [type(module) for module in model.modules()]
    assert use_lean_layers(model) == 0
    assert [type(module) for module in model.modules()] == classes
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_switching_keeps_the_state_dict():
    plain = tiny(8)
    lean = lean_twin(plain)
    with torch.no_grad():
        lean(ids(8, 5))  # takes the fused copies: they must not show in the state dict
    expected, got = plain.state_dict(), lean.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)
    assert use_lean_layers(lean) == 0  # already switched


def test_a_changed_weight_is_seen_by_the_next_forward():
    plain = tiny(9)
    lean = lean_twin(plain)
    prompt = ids(9, 6)
    with torch.no_grad():
        lean(prompt)
        for model in (plain, lean):
            layer = model.model.layers[1]
            layer.self_attn.q_proj.weight.mul_(2)  # in place: a new _version
            layer.mlp.up_proj.weight.mul_(0.5)
            layer.self_attn.v_proj.weight = nn.Parameter(layer.self_attn.v_proj.weight * -1)  # replaced
        torch.testing.assert_close(lean(prompt).logits, plain(prompt).logits, **TOLERANCE)


def test_a_hooked_projection_takes_the_original_forward():
    """A hook (or a LoRA wrapper) on a fused projection must run: the layer falls back to HF's forward."""
    plain = tiny(10)
    lean = lean_twin(plain)
    calls = []
    for model in (plain, lean):
        model.model.layers[0].mlp.gate_proj.register_forward_hook(lambda module, args, out: calls.append(1) or 2 * out)
    with torch.no_grad():
        expected, got = plain(ids(10, 5)).logits, lean(ids(10, 5)).logits
    torch.testing.assert_close(got, expected, **TOLERANCE)
    assert len(calls) == 2


def test_attention_weights_requested_from_an_eager_model_come_from_the_original_forward():
    plain = tiny(11, "eager")
    lean = lean_twin(plain)
    with torch.no_grad():
        expected, got = (model(ids(11, 6), output_attentions=True).attentions for model in (plain, lean))
    assert len(got) == len(expected) == plain.config.num_hidden_layers
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOLERANCE)


def test_without_onednn_the_fused_weight_takes_f_linear(monkeypatch):
    monkeypatch.setattr("space.kernels.lean_layers.packed_products_available", lambda: False)
    plain = tiny(12)
    lean = lean_twin(plain)
    prompt = ids(12, 7)
    with torch.no_grad():
        torch.testing.assert_close(lean(prompt).logits, plain(prompt).logits, **TOLERANCE)
    hidden, kv = plain.config.hidden_size, plain.config.num_key_value_heads * plain.model.layers[0].self_attn.head_dim
    assert lean.model.layers[0]._fused_weights["qkv"].shape == (hidden + 2 * kv, hidden)  # the plain concatenation


def test_bf16_logits_stay_close_to_the_plain_bf16_model():
    plain = tiny(13).to(torch.bfloat16)
    lean = lean_twin(plain)
    prompt = ids(13, 10)
    cache = CompactCache.for_model(lean, 16), CompactCache.for_model(plain, 16)
    with torch.no_grad():
        for chunk in (prompt[:, :8], prompt[:, 8:9], prompt[:, 9:]):
            got, expected = (model(chunk, cache=c, use_cache=True).logits.float()
                             for model, c in zip((lean, plain), cache))
            assert got.dtype == expected.dtype
            scale = expected.abs().max()
            torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-2)


def test_load_model_switches_llama_layers_on_cpu(tmp_path):
    tiny_llama(seed=14).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = space.load_model(tmp_path)
    assert all(type(layer) is LeanLlamaDecoderLayer for layer in model.model.layers)
    for kwargs in ({"lean_layers": False}, {"fast_cpu_linear": False}):
        model, _ = space.load_model(tmp_path, **kwargs)
        assert all(type(layer) is LlamaDecoderLayer for layer in model.model.layers)
    model, _ = space.load_model(tmp_path, fast_cpu_linear=False, lean_layers=True)
    assert all(type(layer) is LeanLlamaDecoderLayer for layer in model.model.layers)
