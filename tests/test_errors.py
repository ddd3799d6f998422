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
    ("mask id out of vocabulary", lambda: (tiny_llama(), PROMPT, "space", dict(mask_id=96)),
     "outside the model vocabulary"),
    ("mask_diff ids past the end", lambda: (tiny_llama(), PROMPT, "space", dict(mask_id=94, mask_diff=True)),
     "outside the model vocabulary"),
    ("model without mask tokens", lambda: (no_masks(), PROMPT, "space", {}), "no SPACE mask tokens"),
    ("batch of two", lambda: (tiny_llama(), PROMPT.repeat(2, 1), "space", {}), "batch size 2 is not supported"),
    ("prompt longer than context",
     lambda: (tiny_llama(max_position_embeddings=16), torch.full((1, 20), 5), "space", {}), "context is 16"),
    ("mask_num zero", lambda: (tiny_llama(), PROMPT, "space", dict(mask_num=0)), "mask_num must be >= 1"),
    ("unknown method", lambda: (tiny_llama(), PROMPT, "medusa", {}), "unknown method 'medusa'"),
    ("unknown sampling mode", lambda: (tiny_llama(), PROMPT, "space", dict(sampling_mode="residual2")),
     "unknown sampling_mode"),
    ("unknown option", lambda: (tiny_llama(), PROMPT, "space", dict(mask_nums=3)),
     r"unknown option\(s\) \['mask_nums'\]"),
    ("float prompt", lambda: (tiny_llama(), PROMPT.float(), "ar", {}), r"\[1, n\] LongTensor"),
    ("token out of vocabulary", lambda: (tiny_llama(), torch.tensor([[5, 500]]), "ar", {}), "outside the vocabulary"),
    ("zero temperature", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample=True, temperature=0)),
     "temperature must be finite and > 0"),
    ("top_p above one", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample=True, top_p=1.5)),
     r"top_p must be in \(0, 1\]"),
    ("max_new_tokens zero", lambda: (tiny_llama(), PROMPT, "ar", dict(max_new_tokens=0)),
     "max_new_tokens must be >= 1"),
    ("max_new_tokens a float", lambda: (tiny_llama(), PROMPT, "ar", dict(max_new_tokens=2.5)),
     r"max_new_tokens must be an integer \(got 2.5\)"),
    ("max_new_tokens a string", lambda: (tiny_llama(), PROMPT, "space", dict(max_new_tokens="4")),
     r"max_new_tokens must be an integer \(got '4'\)"),
    ("max_new_tokens None", lambda: (tiny_llama(), PROMPT, "hf", dict(max_new_tokens=None)),
     r"max_new_tokens must be an integer \(got None\)"),
    ("top_k a float", lambda: (tiny_llama(), PROMPT, "ar", dict(do_sample=True, top_k=2.5)),
     r"top_k must be an integer \(got 2.5\)"),
    ("eos a string", lambda: (tiny_llama(), PROMPT, "ar", dict(eos_token_id="x")),
     r"eos_token_id must be an integer or a list of integers or None \(got 'x'\)"),
    ("do_sample a string", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample="false")),
     r"do_sample must be True or False \(got 'false'\)"),
    ("mask_num above the trained width", lambda: (tiny_llama(mask_num=3), PROMPT, "space", dict(mask_num=6)),
     r"mask_num 6 is above the width this model's masks were trained with \(config mask_num 3\); pass mask_num <= 3"),
    # found by probing the API with bad values (issue 31): each was a trace from inside torch or silent
    ("infinite temperature", lambda: (tiny_llama(), PROMPT, "ar", dict(do_sample=True, temperature=float("inf"))),
     r"temperature must be finite and > 0 when sampling \(got inf\)"),
    ("NaN temperature", lambda: (tiny_llama(), PROMPT, "space", dict(do_sample=True, temperature=float("nan"))),
     r"temperature must be finite and > 0 when sampling \(got nan\)"),
    ("seed past torch's range", lambda: (tiny_llama(), PROMPT, "ar", dict(do_sample=True, seed=2**70)),
     r"seed must be in \[-9223372036854775808, 18446744073709551615\]"),
    ("NaN in the cost curve", lambda: (tiny_llama(), PROMPT, "space", dict(cost_curve={1: float("nan"), 8: 2.0})),
     "cost_curve must be None, \"measure\" or a map of whole rows >= 1 to finite positive times"),
    ("infinite cost", lambda: (tiny_llama(), PROMPT, "space", dict(cost_curve={1: 1.0, 8: float("inf")})),
     "a cost curve needs whole row counts >= 1 and finite positive times"),
    ("fractional rows in the cost curve", lambda: (tiny_llama(), PROMPT, "space", dict(cost_curve={2.5: 1.0})),
     "a cost curve needs whole row counts"),
    ("threshold_state not a ThresholdState",
     lambda: (tiny_llama(), PROMPT, "self_spec", dict(skip_layers={"attention": [0], "mlp": []}, threshold_state="x")),
     r"threshold_state must be a space.decoding.threshold.ThresholdState or None \(got str\)"),
    ("model a path string", lambda: ("model", PROMPT, "ar", {}),
     r"model must be a Hugging Face causal LM .* not str"),
    ("model None", lambda: (None, PROMPT, "space", {}), "model must be a Hugging Face causal LM .* not NoneType"),
    ("model a plain module", lambda: (torch.nn.Linear(2, 2), PROMPT, "ar", {}),
     "model must be a Hugging Face causal LM .* not Linear"),
    ("sat_num above the trained number", lambda: (tiny_llama(sat_num=3), PROMPT, "sdsat", dict(sat_num=9)),
     r"sat_num 9 is above the number of adaptive tokens this model was trained with \(config sat_num 3\)"),
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


def test_a_runaway_mask_num_is_refused_by_the_memory_bound_before_anything_is_built(monkeypatch):
    """With no trained width to bound it (an explicit mask id on a model without masks), k=200 would build
    40,401-row steps (21.7 GB before the OOM killer); the bound names the largest k that fits."""
    import space.decoding.space as space_decoding

    def no_layout(*args, **kwargs):
        raise AssertionError("the decoding loop (and its step layout) started before the bound was checked")

    monkeypatch.setattr(space_decoding, "generate_tree", no_layout)
    message = (r"mask_num 200 makes SPACE steps of 1 \+ k\(k\+2\) = 40401 rows; with 131 prompt \+ new tokens one "
               r"step's attention mask has 1,637,533,332 entries, above the memory bound "
               r"space.decoding.space.MAX_STEP_ENTRIES = 67,108,864; use mask_num <= 89")
    with pytest.raises(space.SpaceError, match=message) as error:
        space.decode(no_masks(), PROMPT, "space", mask_id=95, mask_num=200, max_new_tokens=128)
    assert "\n" not in str(error.value)
    space_decoding.check_step_size(89, 131)  # the named bound itself fits


def test_the_trained_width_binds_only_the_recorded_masks():
    """Up to the trained width decodes; another mask id (or SAT id) than the recorded one is not bound by it."""
    model = tiny_llama(seed=1, mask_num=3, sat_num=2)
    reference = space.decode(model, PROMPT, "ar", max_new_tokens=8, eos_token_id=[]).tokens.tolist()
    assert space.decode(model, PROMPT, "space", max_new_tokens=8, eos_token_id=[],
                        mask_num=3).tokens.tolist() == reference
    assert space.decode(model, PROMPT, "space", max_new_tokens=8, eos_token_id=[], mask_num=5,
                        mask_id=50).tokens.tolist() == reference
    assert space.decode(model, PROMPT, "sdsat", max_new_tokens=8, eos_token_id=[], sat_num=4,
                        sat_id=50).tokens.tolist() == reference


@pytest.mark.parametrize("method,options", [
    ("self_spec", dict(max_draft=10**9, skip_layers={"attention": [1], "mlp": []})),
    ("sdsat", dict(sat_num=10**9, sat_id=50)),
])
def test_a_huge_draft_length_reserves_no_more_cache_than_the_budget(monkeypatch, method, options):
    """max_draft / sat_num past max_new_tokens can never be drafted; the cache must not reserve room for them."""
    from space.cache import CompactCache

    capacities = []
    real = CompactCache.for_model.__func__

    def for_model(cls, model, capacity, rows=1):
        capacities.append(capacity)
        assert capacity <= 64, f"cache capacity {capacity} reserved for a 3-token prompt and 10 new tokens"
        return real(cls, model, capacity, rows)

    monkeypatch.setattr(CompactCache, "for_model", classmethod(for_model))
    model = tiny_llama(seed=2, sat_num=3)
    reference = space.decode(model, PROMPT, "ar", max_new_tokens=10, eos_token_id=[]).tokens.tolist()
    assert space.decode(model, PROMPT, method, max_new_tokens=10, eos_token_id=[],
                        **options).tokens.tolist() == reference
    assert capacities


@pytest.mark.parametrize("method", ["ar", "space", "hf", "prompt_lookup", "sdsat"])
def test_decoding_is_cut_to_the_room_the_context_leaves_with_a_warning(method):
    """A 16-position model, a 3-token prompt: 13 new tokens fit; 40 asked for are cut to 13, with one warning,
    and every method stops at the same length (so identity with AR holds)."""
    model = tiny_llama(seed=3, max_position_embeddings=16, sat_num=3)
    with pytest.warns(space.SpaceWarning, match=r"max_new_tokens 40 cut to 13: the prompt has 3 tokens and the "
                                                r"model's context \(max_position_embeddings\) is 16") as caught:
        result = space.decode(model, PROMPT, method, max_new_tokens=40, eos_token_id=[])
    assert len([w for w in caught if issubclass(w.category, space.SpaceWarning)]) == 1
    assert result.tokens.numel() == 13
    assert result.tokens.tolist() == space.decode(model, PROMPT, "ar", max_new_tokens=13,
                                                  eos_token_id=[]).tokens.tolist()


def test_decoding_within_the_context_says_nothing():
    import warnings

    model = tiny_llama(seed=3, max_position_embeddings=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", space.SpaceWarning)
        assert space.decode(model, PROMPT, "space", max_new_tokens=13, eos_token_id=[]).tokens.numel() == 13


def test_prepare_takes_a_list_of_option_dicts():
    from space.decoding import prepare
    from space.testing import tiny_tokenizer

    with pytest.raises(space.SpaceError, match=r"options must be a list of dicts, one per run of 'space' \(got dict\)"):
        prepare("space", tiny_llama(), tiny_tokenizer(), {})
    with pytest.raises(space.SpaceError, match="model must be a Hugging Face causal LM"):
        prepare("ar", "model", tiny_tokenizer(), [{}])
