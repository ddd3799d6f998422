"""The decoder registry: each method's own options, the error for an option it does not take, the state an
evaluation carries from prompt to prompt, each method's preparation step, and the per-answer record every
method's stats give."""

from dataclasses import fields

import pytest
import torch

import space
from space.decoding import DECODERS, Decoder, option_names, parse_options, session_options
from space.decoding.common import DecodeOptions, DecodeStats
from space.decoding.hf import PromptLookupOptions
from space.decoding.sdsat import SdsatOptions, SdsatStats
from space.decoding.self_spec import SelfSpecOptions, SelfSpecStats
from space.decoding.space import SpaceOptions
from space.decoding.threshold import ThresholdState
from space.decoding.tree import TreeStats
from space.decoding.tree_shape import AcceptanceRates
from space.eval.datasets import EvalPrompt
from space.eval.harness import run_prompts
from space.eval.results import ResultStore
from space.testing import tiny_llama, tiny_tokenizer

PROMPT = torch.tensor([[5, 6, 7]])
SHARED = ["max_new_tokens", "eos_token_id", "use_cache", "do_sample", "temperature", "top_k", "top_p", "seed",
          "streamer", "on_step"]
# per method: an option another method takes but this one does not
INAPPLICABLE = {"ar": "mask_num", "space": "skip_layers", "hf": "sat_num", "prompt_lookup": "mask_num",
                "self_spec": "sampling_mode", "sdsat": "max_draft"}
OWN_OPTIONS = {
    "ar": [], "hf": [], "prompt_lookup": ["prompt_lookup_num_tokens"],
    "space": ["mask_num", "mask_id", "mask_diff", "sampling_mode", "tree", "copy_tokens", "copy_ngram", "branch_width",
              "cost_curve", "max_tree_rows", "acceptance", "sampler_head"],
    "self_spec": ["skip_layers", "skip_layers_key", "max_draft", "draft_threshold", "adaptive_threshold",
                  "auto_parameters", "threshold_state"],
    "sdsat": ["sat_num", "sat_id", "sampling_mode"],
}


# --- the registry and the options classes ------------------------------------------------------


def test_registry_maps_each_method_to_its_loop_and_options():
    assert set(DECODERS) == set(OWN_OPTIONS) == set(INAPPLICABLE) == set(space.DECODERS)
    assert space.DecodeOptions is DecodeOptions
    for method, entry in DECODERS.items():
        assert isinstance(entry, Decoder) and callable(entry.generate)
        assert issubclass(entry.Options, DecodeOptions)
        assert option_names(method) == [f.name for f in fields(entry.Options)] == SHARED + OWN_OPTIONS[method]
        assert f"{method}: " in space.decode.__doc__
        assert all(name in space.decode.__doc__ for name in OWN_OPTIONS[method])


@pytest.mark.parametrize("method", sorted(INAPPLICABLE))
def test_an_option_the_method_does_not_take_is_one_clear_error(method):
    name = INAPPLICABLE[method]
    expected = f"method '{method}' takes no option '{name}' ('{name}' is an option of "
    with pytest.raises(space.SpaceError) as error:
        space.decode(tiny_llama(), PROMPT, method, **{name: 3})
    message = str(error.value)
    assert message.startswith(expected) and f"its options: {option_names(method)}" in message
    assert "\n" not in message


def test_unknown_option_and_unknown_method():
    with pytest.raises(space.SpaceError, match=r"unknown option\(s\) \['mask_nums'\] for method 'ar'; its options: \["):
        parse_options("ar", dict(mask_nums=3))
    with pytest.raises(space.SpaceError, match=r"method 'hf' takes no options \['mask_num', 'sat_num'\]"):
        parse_options("hf", dict(mask_num=3, sat_num=2))
    for call in (lambda: option_names("medusa"), lambda: session_options("medusa"),
                 lambda: parse_options("medusa", {})):
        with pytest.raises(space.SpaceError, match="unknown method 'medusa'; available: "):
            call()


def test_each_options_class_validates_its_own_fields_only():
    assert type(parse_options("space", dict(mask_num=2))) is SpaceOptions
    assert type(parse_options("ar", {})) is DecodeOptions
    for options_class, bad, message in [
        (DecodeOptions, dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (SpaceOptions, dict(mask_num=0), "mask_num must be >= 1"),
        (SpaceOptions, dict(sampling_mode="residual"), "unknown sampling_mode"),
        (SdsatOptions, dict(sat_num=0), "sat_num must be >= 1"),
        (SdsatOptions, dict(sampling_mode="tree"), "unknown sampling_mode"),
        (SelfSpecOptions, dict(max_draft=0), "max_draft must be >= 1"),
        (SelfSpecOptions, dict(draft_threshold=1.5), r"draft_threshold must be in \[0, 1\]"),
        (SelfSpecOptions, dict(do_sample=True, temperature=0), "temperature must be finite"),  # shared checks too
    ]:
        with pytest.raises(space.SpaceError, match=message):
            options_class(**bad).validate()


@pytest.mark.parametrize("options_class,bad,message", [
    (DecodeOptions, dict(max_new_tokens=2.5), r"max_new_tokens must be an integer \(got 2.5\)"),
    (DecodeOptions, dict(max_new_tokens="4"), r"max_new_tokens must be an integer \(got '4'\)"),
    (DecodeOptions, dict(max_new_tokens=None), r"max_new_tokens must be an integer \(got None\)"),
    (DecodeOptions, dict(max_new_tokens=True), r"max_new_tokens must be an integer \(got True\)"),
    (DecodeOptions, dict(top_k=2.5), r"top_k must be an integer \(got 2.5\)"),
    (DecodeOptions, dict(eos_token_id="x"), r"eos_token_id must be an integer or a list of integers or None"),
    (DecodeOptions, dict(eos_token_id=[2, "3"]), r"eos_token_id must be an integer or a list of integers"),
    (DecodeOptions, dict(do_sample="false"), r"do_sample must be True or False \(got 'false'\)"),
    (DecodeOptions, dict(use_cache=0), r"use_cache must be True or False \(got 0\)"),
    (DecodeOptions, dict(temperature="0.7"), r"temperature must be a number \(got '0.7'\)"),
    (DecodeOptions, dict(seed=1.5), r"seed must be an integer or None \(got 1.5\)"),
    (SpaceOptions, dict(mask_num=2.0), r"mask_num must be an integer or None \(got 2.0\)"),
    (SpaceOptions, dict(mask_diff="yes"), r"mask_diff must be True or False or None"),
    (SdsatOptions, dict(sat_id="95"), r"sat_id must be an integer or None"),
    (SelfSpecOptions, dict(max_draft=None), r"max_draft must be an integer \(got None\)"),
    (SelfSpecOptions, dict(draft_threshold="0.5"), r"draft_threshold must be a number or None"),
    (SelfSpecOptions, dict(adaptive_threshold="false"), r"adaptive_threshold must be True or False"),
    (PromptLookupOptions, dict(prompt_lookup_num_tokens=0), r"prompt_lookup_num_tokens must be >= 1"),
])
def test_an_option_of_the_wrong_type_is_one_clear_error(options_class, bad, message):
    """A string must never pass for a flag (`do_sample="false"` sampled) nor a float for a count (a torch trace)."""
    with pytest.raises(space.SpaceError, match=message) as error:
        options_class(**bad).validate()
    assert "\n" not in str(error.value)


def test_options_of_the_right_types_pass():
    import numpy as np

    DecodeOptions(max_new_tokens=np.int64(4), eos_token_id=(2, 3), temperature=1, top_p=np.float32(0.5)).validate()
    SpaceOptions(mask_num=None, mask_diff=None).validate()
    SelfSpecOptions(draft_threshold=1).validate()


# --- state carried from prompt to prompt, and the record of each answer -------------------------


def test_session_options_are_fresh_per_run_and_only_self_spec_and_space_have_any():
    first, second = session_options("self_spec"), session_options("self_spec")
    assert set(first) == {"threshold_state"} and isinstance(first["threshold_state"], ThresholdState)
    assert first["threshold_state"] is not second["threshold_state"]
    first, second = session_options("space"), session_options("space")
    assert set(first) == {"acceptance"} and isinstance(first["acceptance"], AcceptanceRates)
    assert first["acceptance"] is not second["acceptance"]
    assert all(session_options(method) == {} for method in DECODERS if method not in ("self_spec", "space"))


def test_record_fields_take_every_per_step_and_per_round_list():
    assert list(DecodeStats().record_fields()) == ["steps", "tokens_per_step", "accepted_per_step"]
    assert list(SelfSpecStats().record_fields()) == ["steps", "tokens_per_step", "accepted_per_step",
                                                     "drafted_per_step"]
    assert list(TreeStats().record_fields()) == ["steps", "tokens_per_step", "accepted_per_step", "rows_per_step",
                                                 "copy_accepted_per_step", "topk_accepted_per_step"]
    assert list(SdsatStats().record_fields()) == ["steps", "tokens_per_step", "accepted_per_step",
                                                  "tokens_per_round", "drafted_per_round"]


def answer(tmp_path, model, methods, options, prompts=2):
    """Every method answers `prompts` one-turn prompts; returns the records as samples.jsonl holds them."""
    store = ResultStore(tmp_path / "run", {"test": True})
    turns = [EvalPrompt(id=str(i), turns=[f"tok{5 + i} tok{6 + i} tok{7 + i}"]) for i in range(prompts)]
    return run_prompts(model, tiny_tokenizer(), turns, methods, options, store, "original", progress=False)


RECORD_KEYS = ["id", "turn", "method", "category", "text", "ids", "prompt_tokens", "seconds", "steps",
               "tokens_per_step", "accepted_per_step"]


def test_sdsat_records_carry_per_round_stats_and_other_records_keep_their_keys(tmp_path):
    model = tiny_llama(seed=2, sat_num=3)
    common = dict(max_new_tokens=12, eos_token_id=[])
    methods = ["sdsat", "ar", "space"]
    records = answer(tmp_path, model, methods, {method: common for method in methods})
    by_method = {record["method"]: record for record in records if record["id"] == "0"}
    assert list(by_method["space"]) == RECORD_KEYS + ["rows_per_step", "copy_accepted_per_step",
                                                      "topk_accepted_per_step", "session"]  # its rates, carried
    assert list(by_method["ar"]) == RECORD_KEYS
    record = by_method["sdsat"]
    assert list(record) == RECORD_KEYS + ["tokens_per_round", "drafted_per_round"]
    assert sum(record["tokens_per_round"]) == len(record["ids"]) == 12
    assert len(record["drafted_per_round"]) == len(record["tokens_per_round"]) >= 2
    assert all(0 <= drafted <= 3 for drafted in record["drafted_per_round"])


def test_self_spec_gamma_carries_across_prompts_through_the_generic_path(tmp_path, monkeypatch):
    """run_prompts asks the registry for self_spec's session state: one ThresholdState for the whole run."""
    calls = []
    decode = space.decode

    def recording(model, input_ids, method, **options):
        state = options.get("threshold_state")
        calls.append((method, state, None if state is None else state.gamma))
        result = decode(model, input_ids, method, **options)
        if state is not None:
            assert result.stats.final_threshold == state.gamma
        return result

    monkeypatch.setattr(space, "decode", recording)
    model = tiny_llama(seed=9, num_layers=4)
    skip_all = {"attention": [0, 1, 2, 3], "mlp": [0, 1, 2, 3]}  # a junk drafter: γ only rises
    options = {"self_spec": dict(max_new_tokens=20, eos_token_id=[], skip_layers=skip_all, draft_threshold=0.3),
               "ar": dict(max_new_tokens=20, eos_token_id=[])}
    records = answer(tmp_path, model, ["self_spec", "ar"], options, prompts=3)
    states = [(state, gamma) for method, state, gamma in calls if method == "self_spec"]
    assert len(states) == 3 and all(method == "self_spec" or state is None for method, state, _ in calls)
    state = states[0][0]
    assert all(s is state for s, _ in states)  # one state for the whole run
    # each prompt starts where the last ended
    assert states[0][1] is None and 0.3 < states[1][1] < states[2][1] < state.gamma
    assert state.drafted == sum(sum(r["drafted_per_step"]) for r in records if r["method"] == "self_spec")


# --- each method's preparation step ------------------------------------------------------------------


def test_space_prepares_untrained_masks_only_where_allowed_and_checks_every_k():
    """A model without masks: refused unless untrained ones may be added, then wide enough for every run's k."""
    model, tokenizer = tiny_llama(seed=3), tiny_tokenizer()
    del model.config.mask_id  # a base without mask tokens
    assert space.read_mask_spec(model.config) is None
    with pytest.raises(space.SpaceError, match="mask"):
        space.decoding.prepare("space", model, tokenizer, [{}], untrained=False)
    runs = [{}, {"mask_num": 5}]
    note = space.decoding.prepare("space", model, tokenizer, runs, untrained=True)
    assert note and "untrained" in note and runs == [{}, {"mask_num": 5}]
    assert model.config.mask_num == 5 and space.read_mask_spec(model.config).mask_num == 3  # width 5, decoding k 3
    reference = space.decode(model, PROMPT, "ar", max_new_tokens=12, eos_token_id=[]).tokens.tolist()
    for options in runs:
        assert space.decode(model, PROMPT, "space", max_new_tokens=12, eos_token_id=[],
                            **options).tokens.tolist() == reference
    assert space.decoding.prepare("space", model, tokenizer, runs, untrained=True) is None  # masks are there now
    with pytest.raises(space.SpaceError, match="mask_num 7"):  # a k wider than the masks is named before decoding
        space.decoding.prepare("space", model, tokenizer, [{"mask_num": 7}], untrained=True)


def test_sdsat_prepares_an_untrained_adaptive_token_only_where_allowed():
    model, tokenizer = tiny_llama(seed=4), tiny_tokenizer()
    with pytest.raises(space.SpaceError):
        space.decoding.prepare("sdsat", model, tokenizer, [{}], untrained=False)
    assert "adaptive token" in space.decoding.prepare("sdsat", model, tokenizer, [{"sat_num": 6}], untrained=True)
    assert model.config.sat_num == 6


def test_self_spec_prepares_its_skip_set_from_a_file_once(tmp_path):
    """A skip-set file (option `skip_layers`, entry `skip_layers_key`) is read once and replaced by its entry; the
    same file also works as a plain decode option."""
    from space.decoding.skip_layers import SkipLayers, save_skip_file

    model, tokenizer = tiny_llama(seed=5, num_layers=4), tiny_tokenizer()
    path = tmp_path / "skip.json"
    save_skip_file(path, {"a": SkipLayers((1,), (2,)), "b": SkipLayers((), (3,))})
    runs = [{"skip_layers": str(path), "skip_layers_key": "b", "max_draft": 3}]
    assert space.decoding.prepare("self_spec", model, tokenizer, runs) is None
    assert runs == [{"skip_layers": {"attention": [], "mlp": [3], "num_layers": 4}, "max_draft": 3}]
    reference = space.decode(model, PROMPT, "ar", max_new_tokens=10, eos_token_id=[]).tokens.tolist()
    direct = space.decode(model, PROMPT, "self_spec", max_new_tokens=10, eos_token_id=[], skip_layers=str(path),
                          skip_layers_key="a")
    assert direct.tokens.tolist() == reference
    with pytest.raises(space.SpaceError, match="has no entry 'c'"):
        space.decoding.prepare("self_spec", model, tokenizer, [{"skip_layers": str(path), "skip_layers_key": "c"}])


def test_a_method_without_a_preparation_step_leaves_model_and_options_alone():
    model, tokenizer = tiny_llama(seed=6), tiny_tokenizer()
    vocab, runs = model.config.vocab_size, [{"max_new_tokens": 4}]
    for method in ("ar", "hf", "prompt_lookup"):
        assert DECODERS[method].prepare is None
        assert space.decoding.prepare(method, model, tokenizer, runs, untrained=True) is None
    assert runs == [{"max_new_tokens": 4}] and model.config.vocab_size == vocab
