"""Model loading: HF directories, dtypes, peft adapters (merged or not), and bad paths."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import space
from space.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def saved_tiny(tmp_path):
    model = tiny_llama(seed=3)
    model.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    return model, tmp_path / "base"


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_load_directory_keeps_weights_and_mask_fields(saved_tiny):
    original, path = saved_tiny
    model, tokenizer = space.load_model(path, fast_cpu_linear=False)
    ids = torch.tensor([[4, 5, 6, 7]])
    assert torch.allclose(logits(model, ids), logits(original, ids), atol=1e-6)
    fast, _ = space.load_model(path)  # CPU default: the same weights, products in another rounding order
    assert torch.allclose(logits(fast, ids), logits(original, ids), rtol=1e-4, atol=1e-4)
    assert space.read_mask_spec(model.config) == space.read_mask_spec(original.config)
    assert len(tokenizer) == 96 and not model.training


def test_load_in_bfloat16(saved_tiny):
    _, path = saved_tiny
    model, _ = space.load_model(path, dtype="bf16")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16


@pytest.mark.parametrize("merge", [True, False])
def test_adapter_on_top_of_base_gives_the_peft_logits(saved_tiny, tmp_path, merge):
    base, path = saved_tiny
    peft_model = get_peft_model(tiny_llama(seed=3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)  # B starts at zero; make the adapter change something
    peft_model.save_pretrained(tmp_path / "adapter")
    model, _ = space.load_model(path, adapter=tmp_path / "adapter", merge_adapter=merge)
    ids = torch.tensor([[4, 5, 6, 7]])
    expected = logits(peft_model.eval(), ids)
    assert not torch.allclose(expected, logits(base, ids), atol=1e-3)
    assert torch.allclose(logits(model, ids), expected, atol=1e-5)
    assert space.decode(model, ids, "space", max_new_tokens=10).tokens.tolist() == \
        space.decode(model, ids, "ar", max_new_tokens=10).tokens.tolist()


def test_bad_paths_give_one_line_errors(tmp_path, saved_tiny):
    _, path = saved_tiny
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(name_or_path=tmp_path / "missing"), "model path not found"),
        (dict(name_or_path=tmp_path / "empty"), "is not a model directory"),
        (dict(name_or_path=tmp_path / "missing.gguf"), "GGUF file not found"),
        (dict(name_or_path=path, adapter=tmp_path / "empty"), "is not a peft adapter directory"),
        (dict(name_or_path=path, dtype="float8"), "unknown dtype"),
    ]
    for kwargs, message in cases:
        with pytest.raises(space.SpaceError, match=message) as error:
            space.load_model(**kwargs)
        assert "\n" not in str(error.value)
