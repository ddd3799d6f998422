"""Half-precision models: the rows a decoder reads get fp32 logits, from an fp32 copy of lm_head that follows
the weights; greedy decoding still runs for every method."""

import pytest
import torch
import torch.nn.functional as F

import space
from space.decoding.common import Model, fp32_head
from space.kernels.fast_linear import use_fast_linear
from space.testing import tiny_llama


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fast_linear", [False, True])
def test_logits_of_a_half_model_are_computed_in_fp32(dtype, fast_linear):
    model = tiny_llama(seed=1).to(dtype)
    if fast_linear:
        use_fast_linear(model)
    target = Model(model)
    rows = torch.randn(3, 64).to(dtype)
    with torch.inference_mode():
        logits = target.logits(rows)
    exact = F.linear(rows.float(), model.lm_head.weight.float())
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, exact, atol=1e-5)
    assert not torch.equal(model.lm_head(rows).float(), exact)  # the half product itself rounds


def test_the_fp32_copy_is_kept_and_follows_changes_of_the_weight():
    model = tiny_llama(seed=2).to(torch.bfloat16)
    head = model.get_output_embeddings()
    first = fp32_head(head)
    assert fp32_head(head) is first
    with torch.no_grad():
        head.weight[5] += 1
    second = fp32_head(head)
    assert second is not first and torch.equal(second.weight, head.weight.float())
    assert fp32_head(tiny_llama(seed=2).get_output_embeddings()) is not second


def test_fp32_models_use_their_head_directly():
    model = tiny_llama(seed=3)
    rows = torch.randn(2, 64)
    assert torch.equal(Model(model).logits(rows), model.lm_head(rows))


@pytest.mark.parametrize("method", ["ar", "space", "sdsat", "hf", "prompt_lookup"])
def test_every_method_decodes_a_bf16_model(method):
    model = tiny_llama(seed=4, sat_num=3).to(torch.bfloat16)
    prompt = torch.randint(3, 80, (1, 7), generator=torch.Generator().manual_seed(4))
    result = space.decode(model, prompt, method, max_new_tokens=12, eos_token_id=[])
    assert result.tokens.numel() == 12 and sum(result.stats.tokens_per_step) == 12
