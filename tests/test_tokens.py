"""Mask tokens: ids, resize, mean initialisation, config record, save/reload, and bad ids."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

import space
from space.testing import tiny_llama, tiny_tokenizer
from space.tokens import MaskSpec, read_mask_spec


def fresh(vocab_size=96, **kwargs):
    model = tiny_llama(vocab_size=vocab_size, **kwargs)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    return model, tiny_tokenizer(vocab_size)


def test_default_id_is_first_free_and_rows_are_mean_initialised():
    model, tokenizer = fresh()
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings().weight.detach().clone()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=3)
    assert spec == MaskSpec(mask_id=96, mask_num=3, mask_diff=False)
    assert model.config.vocab_size == 97 and len(tokenizer) == 97
    assert tokenizer.convert_tokens_to_ids("<space_mask_0>") == 96
    assert torch.allclose(model.get_input_embeddings().weight[96], old_input.mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[96], old_output.mean(0))  # untied head too
    assert torch.equal(model.get_input_embeddings().weight[:96], old_input)  # real rows untouched
    assert read_mask_spec(model.config) == spec


def test_mask_diff_adds_k_plus_one_ids():
    model, tokenizer = fresh()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=3, mask_diff=True)
    assert spec.ids == [96, 97, 98, 99]
    assert [tokenizer.convert_tokens_to_ids(f"<space_mask_{j}>") for j in range(4)] == [96, 97, 98, 99]
    assert model.config.vocab_size == 100


def test_tied_embeddings_share_the_new_rows():
    model, tokenizer = fresh(tie_word_embeddings=True)
    space.add_mask_tokens(model, tokenizer, mask_num=2)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.get_output_embeddings().weight.shape[0] == 97


def test_llama_vocab_mask_id_32002_with_fillers_survives_save_and_reload(tmp_path):
    model, tokenizer = fresh(vocab_size=32000, hidden_size=16, num_heads=2, num_kv_heads=1)
    spec = space.add_mask_tokens(model, tokenizer, mask_num=5, mask_id=32002)
    assert spec.mask_id == 32002 and model.config.vocab_size == 32003
    assert tokenizer.convert_ids_to_tokens([32000, 32001, 32002]) == ["<space_filler_32000>", "<space_filler_32001>", "<space_mask_0>"]
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert read_mask_spec(reloaded.config) == MaskSpec(32002, 5, False)
    assert reloaded_tokenizer.convert_tokens_to_ids("<space_mask_0>") == 32002
    assert reloaded_tokenizer("tok7 <space_mask_0>", add_special_tokens=False).input_ids == [7, 32002]
    # the reloaded model decodes with SPACE and no flags
    prompt = torch.tensor([[5, 6, 7]])
    assert space.decode(reloaded, prompt, "space", max_new_tokens=8).tokens.tolist() == \
        space.decode(reloaded, prompt, "ar", max_new_tokens=8).tokens.tolist()


def test_readding_own_mask_token_is_a_no_op():
    model, tokenizer = fresh()
    first = space.add_mask_tokens(model, tokenizer, mask_num=3)
    again = space.add_mask_tokens(model, tokenizer, mask_num=3, mask_id=first.mask_id)
    assert again == first and len(tokenizer) == 97 and model.config.vocab_size == 97


def test_mask_id_that_is_a_real_token_is_refused():
    model, tokenizer = fresh()
    with pytest.raises(space.SpaceError, match="already the token 'tok10'"):
        space.add_mask_tokens(model, tokenizer, mask_num=3, mask_id=10)
    with pytest.raises(space.SpaceError, match="mask_num must be >= 1"):
        space.add_mask_tokens(model, tokenizer, mask_num=0)
