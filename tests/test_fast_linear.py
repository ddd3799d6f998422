"""`space.kernels.fast_linear.RowsLinear`: the same products as `nn.Linear`, and decoders stay lossless on it."""

import pytest
import torch
from torch import nn

import space
from space.kernels.fast_linear import RowsLinear, packed_products_available, use_fast_linear
from space.testing import tiny_llama


@pytest.mark.parametrize("rows", [1, 2, 7, 36])
@pytest.mark.parametrize("bias", [False, True])
def test_rows_linear_matches_linear(rows, bias):
    torch.manual_seed(rows)
    plain = nn.Linear(48, 80, bias=bias)
    fast = nn.Linear(48, 80, bias=bias)
    fast.load_state_dict(plain.state_dict())
    wrapper = nn.Sequential(fast)
    assert use_fast_linear(wrapper) == 1 and isinstance(wrapper[0], RowsLinear)
    x = torch.randn(1, rows, 48)
    with torch.inference_mode():
        torch.testing.assert_close(wrapper(x), plain(x), rtol=1e-5, atol=1e-5)
        assert wrapper(x).shape == (1, rows, 80)


def test_rows_linear_retakes_its_transposed_copy_when_the_weight_changes():
    layer = nn.Sequential(nn.Linear(8, 4, bias=False))
    use_fast_linear(layer)
    x = torch.randn(1, 8)
    with torch.inference_mode():
        first = layer(x)
    with torch.no_grad():
        layer[0].weight.mul_(2)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), 2 * first)


def test_rows_linear_keeps_gradients_flowing():
    layer = nn.Sequential(nn.Linear(8, 4))
    use_fast_linear(layer)
    layer(torch.randn(3, 8)).sum().backward()
    assert layer[0].weight.grad is not None


@pytest.mark.parametrize("seed", range(4))
def test_decoders_stay_identical_on_fast_linear_layers(seed):
    model = tiny_llama(seed=seed)
    use_fast_linear(model)
    prompt = torch.randint(3, model.config.vocab_size - 8, (1, 6), generator=torch.Generator().manual_seed(seed))
    reference = space.decode(model, prompt, "ar", max_new_tokens=24, eos_token_id=[]).tokens
    for use_cache in (True, False):
        result = space.decode(model, prompt, "space", max_new_tokens=24, eos_token_id=[], use_cache=use_cache)
        assert result.tokens.tolist() == reference.tolist()


def test_fp16_inputs_keep_the_plain_product():
    """oneDNN's packed product serves fp32 and bf16; fp16 rows must get exactly `F.linear`."""
    layer = torch.nn.Linear(24, 40).to(torch.float16)
    layer.__class__ = RowsLinear
    for rows in (1, 5):
        x = torch.randn(rows, 24).to(torch.float16)
        with torch.inference_mode():
            assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_this_torch_build_has_the_packed_product():
    """PyTorch's x86 and aarch64 CPU wheels ship oneDNN: the fast path is the one the suite exercises."""
    assert packed_products_available()


@pytest.mark.parametrize("rows", [1, 16])
def test_bf16_rows_take_the_packed_product(rows):
    torch.manual_seed(rows)
    layer = torch.nn.Linear(64, 96).to(torch.bfloat16)
    layer.__class__ = RowsLinear
    x = torch.randn(rows, 64).to(torch.bfloat16)
    with torch.inference_mode():
        out = layer(x)
        expected = nn.functional.linear(x.float(), layer.weight.float(), layer.bias.float())
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)
    assert layer._weight_copy.dtype == torch.bfloat16  # the packed copy, not a float one


def test_without_onednn_the_earlier_formulations_serve(monkeypatch):
    monkeypatch.setattr("space.kernels.fast_linear.packed_products_available", lambda: False)
    layer = nn.Linear(24, 40)
    layer.__class__ = RowsLinear
    for rows in (1, 5):
        x = torch.randn(rows, 24)
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert layer._weight_copy.shape == (24, 40)  # the transposed copy of the one-row path
