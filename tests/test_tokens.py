"""Mask tokens: ids, resize, mean initialisation, config record, save/reload, and bad ids."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

import space
from space.testing import tiny_llama, tiny_text_tokenizer, tiny_tokenizer
from space.tokens import MaskSpec, add_sat_tokens, gathered, read_mask_spec, text_use


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
    assert tokenizer.convert_ids_to_tokens([32000, 32001, 32002]) == ["<space_filler_32000>", "<space_filler_32001>",
                                                                      "<space_mask_0>"]
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
    with pytest.raises(space.SpaceError, match="mask id 10 is the token 'tok10', which the tokenizer uses for text"):
        space.add_mask_tokens(model, tokenizer, mask_num=3, mask_id=10)
    with pytest.raises(space.SpaceError, match="mask_num must be a whole number >= 1"):
        space.add_mask_tokens(model, tokenizer, mask_num=0)


# --- explicit ids that already exist ---------------------------------------------------------


def with_added_token(content: str, special: bool, chat_template: str | None = None):
    """tiny_text_tokenizer (320 pieces) plus one added token at id 320, and a model whose row 320 is 'trained'."""
    tokenizer = tiny_text_tokenizer()
    if special:
        tokenizer.add_special_tokens({"extra_special_tokens": [content]}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_tokens([content])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    with torch.no_grad():
        model.get_input_embeddings().weight[320] = 7.0  # unlike the mean of the other rows
    return model, tokenizer


@pytest.mark.parametrize("special", [False, True])
def test_existing_added_mask_token_is_used_as_is(special, tmp_path):
    model, tokenizer = with_added_token("<mask>", special)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=3, mask_id=320)
    assert spec == MaskSpec(320, 3, False) and read_mask_spec(model.config) == spec
    assert len(tokenizer) == 321 and tokenizer.convert_tokens_to_ids("<space_mask_0>") == tokenizer.unk_token_id
    assert torch.equal(model.get_input_embeddings().weight, before_in)  # no resize, the trained row is kept
    assert torch.equal(model.get_output_embeddings().weight, before_out)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, reloaded_tokenizer = space.load_model(tmp_path)
    assert read_mask_spec(reloaded.config) == spec and reloaded_tokenizer.convert_tokens_to_ids("<mask>") == 320
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(reloaded, prompt, "space", max_new_tokens=10).tokens.tolist() == \
        space.decode(reloaded, prompt, "ar", max_new_tokens=10).tokens.tolist()


def test_existing_mask_token_with_mask_diff_adds_only_the_missing_ids():
    model, tokenizer = with_added_token("<mask>", special=False)
    spec = space.add_mask_tokens(model, tokenizer, mask_num=2, mask_diff=True, mask_id=320)
    assert spec.ids == [320, 321, 322] and len(tokenizer) == 323
    assert tokenizer.convert_ids_to_tokens([320, 321, 322]) == ["<mask>", "<space_mask_1>", "<space_mask_2>"]
    weight = model.get_input_embeddings().weight
    assert torch.all(weight[320] == 7.0)  # kept
    mean = weight[:320].mean(0)  # new rows: the mean of the real tokens, not of the kept row
    assert torch.allclose(weight[321], mean) and torch.allclose(weight[322], mean)


def test_rows_past_the_tokenizer_are_kept_and_new_rows_mean_initialised():
    model, tokenizer = fresh(vocab_size=100)  # a checkpoint with rows 96..99 that its tokenizer does not name
    tokenizer = tiny_tokenizer(96)
    old = model.get_input_embeddings().weight.detach().clone()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=3, mask_diff=True, mask_id=98)  # ids 98..101
    assert spec.ids == [98, 99, 100, 101] and model.config.vocab_size == 102 and len(tokenizer) == 102
    assert tokenizer.convert_ids_to_tokens([96, 98, 101]) == ["<space_filler_96>", "<space_mask_0>", "<space_mask_3>"]
    weight = model.get_input_embeddings().weight
    assert torch.equal(weight[:100], old)  # rows the checkpoint had, trained or not, are untouched
    assert torch.allclose(weight[100], old[:96].mean(0)) and torch.allclose(weight[101], old[:96].mean(0))
    assert torch.allclose(model.get_output_embeddings().weight[101], model.get_output_embeddings().weight[:96].mean(0))


def test_default_id_on_a_padded_embedding_still_mean_initialises_the_padding_row():
    model, _ = fresh(vocab_size=100)
    tokenizer = tiny_tokenizer(96)
    old = model.get_input_embeddings().weight.detach().clone()
    assert space.add_mask_tokens(model, tokenizer, mask_num=3).mask_id == 96  # we picked it: its row is padding
    assert torch.allclose(model.get_input_embeddings().weight[96], old[:96].mean(0))
    assert torch.equal(model.get_input_embeddings().weight[97:], old[97:])


TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


@pytest.mark.parametrize("content,special,template,token_id,reason", [
    (None, False, None, 10, "an ordinary text piece"),
    (None, False, None, 1, "its bos token"),
    (None, False, None, 2, "its eos token"),
    (None, False, None, 3, "its pad token"),
    (None, False, None, 0, "its unk token"),
    ("<|im_start|>", True, TEMPLATE, 320, "the chat template writes it"),
    ("    ", False, None, 320, "an added token that reads as text"),  # a run of spaces, as code tokenizers add
    ("hello", False, None, 320, "an added token that reads as text"),
])
@pytest.mark.parametrize("adder", ["mask", "sat"])
def test_ids_the_tokenizer_uses_for_text_are_refused_in_one_line(content, special, template, token_id, reason, adder):
    if content is None:
        tokenizer = tiny_text_tokenizer()
        model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    else:
        model, tokenizer = with_added_token(content, special, template)
    label = "mask id" if adder == "mask" else "sat_id"
    with pytest.raises(space.SpaceError, match=rf"{label} {token_id} is the token .*uses for text \({reason}") as error:
        if adder == "mask":
            space.add_mask_tokens(model, tokenizer, mask_num=3, mask_id=token_id)
        else:
            add_sat_tokens(model, tokenizer, sat_num=3, sat_id=token_id)
    assert "\n" not in str(error.value) and f"pick an id >= {len(tokenizer)}" in str(error.value)


@pytest.mark.parametrize("content,special", [("<mask>", False), ("[MASK]", False), ("<|reserved_0|>", True),
                                             ("<|im_end|>", True)])
def test_one_rule_accepts_unused_control_tokens_for_masks_and_sats(content, special):
    # <|im_end|> is special but this tokenizer's chat template does not write it
    model, tokenizer = with_added_token(content, special)
    assert text_use(tokenizer, 320) is None
    assert space.add_mask_tokens(model, tokenizer, mask_num=2, mask_id=320).mask_id == 320
    assert add_sat_tokens(model, tokenizer, sat_num=2, sat_id=320).sat_id == 320
    assert len(tokenizer) == 321 and torch.all(model.get_input_embeddings().weight[320] == 7.0)


def test_gathered_is_a_no_op_without_zero3():
    weight = torch.nn.Parameter(torch.ones(3, 2))
    with gathered([weight]):
        weight.data[1] = 5.0
    assert weight[1].tolist() == [5.0, 5.0]


@pytest.mark.parametrize("mask_diff", [False, True])
def test_decoding_k_is_bounded_by_the_trained_width_and_the_named_fix_widens_it(mask_diff):
    """k above the config's mask_num (the trained width) is refused (issue 17: mask_num=200 grew to 21.7 GB);
    the message's own fix, for untrained masks, records a wider width on the same ids and then decodes."""
    import re

    model, tokenizer = fresh()
    spec = space.add_mask_tokens(model, tokenizer, mask_num=3, mask_diff=mask_diff)
    prompt = torch.tensor([[5, 6, 7]])
    with pytest.raises(space.SpaceError, match=r"mask_num 6 is above the width this model's masks were trained with "
                                               r"\(config mask_num 3\); pass mask_num <= 3") as error:
        space.decode(model, prompt, "space", max_new_tokens=8, mask_num=6)
    fix = re.search(r"space\.add_mask_tokens\(model, tokenizer, (.*)\)$", str(error.value)).group(1)
    wider = space.add_mask_tokens(model, tokenizer, **eval(f"dict({fix})"))
    assert wider == MaskSpec(spec.mask_id, 6, mask_diff)
    assert space.decode(model, prompt, "space", max_new_tokens=8, mask_num=6).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=8).tokens.tolist()
