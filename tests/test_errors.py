"""Bad input to `space.decode` gets one clear line naming the fix, never a trace from inside torch."""

import pytest
import torch

import space
from space.testing import tiny_llama

PROMPT = torch.tensor([[5, 6, 7]])


def no_masks():
    model = tiny_llama()
    del model.config.mask_id
    return model


CASES = [
    ("mask id out of vocabulary", lambda: (tiny_llama(), PROMPT, "space", dict(mask_id=96)), "outside the model vocabulary"),
    ("mask_diff ids past the end", lambda: (tiny_llama(), PROMPT, "space", dict(mask_id=94, mask_diff=True)), "outside the model vocabulary"),
    ("model without mask tokens", lambda: (no_masks(), PROMPT, "space", {}), "no SPACE mask tokens"),
    ("batch of two", lambda: (tiny_llama(), PROMPT.repeat(2, 1), "space", {}), "batch size 2 is not supported"),
    ("prompt longer than context", lambda: (tiny_llama(max_position_embeddings=16), torch.full((1, 20), 5), "space", {}), "context is 16"),
    ("mask_num zero", lambda: (tiny_llama(), PROMPT, "space", dict(mask_num=0)), "mask_num must be >= 1"),
    ("unknown method", lambda: (tiny_llama(), PROMPT, "medusa", {}), "unknown method 'medusa'"),
    ("unknown sampling mode", lambda: (tiny_llama(), PROMPT, "space", dict(sampling_mode="residual2")), "unknown sampling_mode"),
    ("unknown option", lambda: (tiny_llama(), PROMPT, "space", dict(mask_nums=3)), r"unknown option\(s\) \['mask_nums'\]"),
    ("float prompt", lambda: (tiny_llama(), PROMPT.float(), "ar", {}), r"\[1, n\] LongTensor"),
    ("token out of vocabulary", lambda: (tiny_llama(), torch.tensor([[5, 500]]), "ar", {}), "outside the vocabulary"),
    ("zero temperature", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample=True, temperature=0)), "temperature must be > 0"),
    ("top_p above one", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample=True, top_p=1.5)), r"top_p must be in \(0, 1\]"),
    ("max_new_tokens zero", lambda: (tiny_llama(), PROMPT, "ar", dict(max_new_tokens=0)), "max_new_tokens must be >= 1"),
]


@pytest.mark.parametrize("name,build,message", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gets_one_clear_line(name, build, message):
    model, prompt, method, options = build()
    with pytest.raises(space.SpaceError, match=message) as error:
        space.decode(model, prompt, method, **options)
    assert "\n" not in str(error.value)


def test_flash_attention_model_is_refused_before_running():
    model = tiny_llama()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(space.SpaceError, match="cannot take a custom 4D mask"):
        space.decode(model, PROMPT, "space")
