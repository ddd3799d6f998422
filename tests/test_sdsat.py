"""SDSAT: greedy identity with AR, tokens per round, KV cache, token trees, exact vs original sampling,
adaptive tokens, SDSAT sample construction, in-process training and the CLI wiring. Tiny models, CPU, fp32."""

import itertools
import json

import pytest
import torch

import space
from space.cache import CompactCache
from space.decoding.common import Model
from space.decoding.sdsat import build_tree
from space.eval import evaluate
from space.eval.flags import parse_eval_args
from space.testing import DraftOracle, chi_square_p_value, exact_joint, tiny_llama, tiny_text_tokenizer
from space.tokens import SAT_TOKEN, SatSpec, add_sat_tokens, read_sat_spec
from space.training import train
from space.training.collate import SarCollator
from space.training.samples import IGNORE, MaskingConfig, build_sample
from tests.conftest import capture_caches, random_prompt
from tests.test_samples import ScriptedRandom, model_logits
from tests.test_train import make_base, make_dataset

# 60 combinations: seed x k x cache x kv heads x EOS placement x prompt length
CASES = [
    dict(seed=seed, prompt_length=length, k=k, use_cache=use_cache, kv_heads=kv, eos_inside=eos)
    for seed, (k, use_cache, kv, eos, length) in enumerate(
        itertools.islice(
            itertools.product([1, 2, 3, 5, 7], [True, False], [2, 4], [False, True], [1, 5, 17]), 0, None, 2,
        )
    )
]


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def check_rounds(stats, k, total):
    """Every round but the last emits 2 .. k+2 tokens; the per-forward and per-round counts agree."""
    assert sum(stats.tokens_per_round) == sum(stats.tokens_per_step) == total
    assert stats.steps == len(stats.tokens_per_step) <= 2 * len(stats.tokens_per_round)
    assert all(2 <= emitted <= k + 2 for emitted in stats.tokens_per_round[:-1])
    assert 1 <= stats.tokens_per_round[-1] <= k + 2


# --- greedy identity ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_greedy_sdsat_equals_ar(case):
    model = tiny_llama(seed=case["seed"], num_kv_heads=case["kv_heads"], sat_num=case["k"])
    prompt = random_prompt(case["prompt_length"], seed=300 + case["seed"])
    common = dict(max_new_tokens=40, use_cache=case["use_cache"], eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens
    if case["eos_inside"]:
        common["eos_token_id"] = int(reference[len(reference) // 2])
        reference = space.decode(model, prompt, "ar", **common).tokens
    result = space.decode(model, prompt, "sdsat", **common)
    assert result.tokens.tolist() == reference.tolist()
    check_rounds(result.stats, case["k"], len(reference))


def test_there_are_at_least_50_identity_cases():
    assert len(CASES) >= 50
    assert {case["k"] for case in CASES} == {1, 2, 3, 5, 7}
    for key in ("use_cache", "eos_inside"):
        assert {case[key] for case in CASES} == {True, False}


def oracle_model(mode, k, seed, prompt, max_new_tokens):
    wrapped = DraftOracle(tiny_llama(seed=seed, sat_num=k), mode)
    reference = space.decode(wrapped, prompt, "ar", max_new_tokens=max_new_tokens, eos_token_id=[]).tokens
    wrapped.set_reference(torch.cat([prompt[0], reference]))
    return wrapped, reference


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("use_cache", [True, False])
def test_oracle_drafts_give_k_plus_two_tokens_per_round(k, use_cache):
    prompt = random_prompt(6, seed=k)
    oracle, reference = oracle_model("oracle", k, 40 + k, prompt, 37)
    result = space.decode(oracle, prompt, "sdsat", max_new_tokens=37, eos_token_id=[], use_cache=use_cache)
    assert result.tokens.tolist() == reference.tolist()
    rounds = result.stats.tokens_per_round
    assert all(emitted == k + 2 for emitted in rounds[:-1]) and sum(rounds) == 37
    assert result.stats.tokens_per_step[:2] == [1, k + 1]  # t from the draft forward; k drafts + bonus verified
    assert result.stats.acceptance_rate == 1.0


@pytest.mark.parametrize("k", [1, 4, 7])
@pytest.mark.parametrize("use_cache", [True, False])
def test_junk_drafts_give_two_tokens_per_round(k, use_cache):
    prompt = random_prompt(6, seed=k)
    junk, reference = oracle_model("junk", k, 50 + k, prompt, 25)
    result = space.decode(junk, prompt, "sdsat", max_new_tokens=25, eos_token_id=[], use_cache=use_cache)
    assert result.tokens.tolist() == reference.tolist()
    assert result.stats.tokens_per_round == [2] * 12 + [1]
    assert result.stats.accepted_per_step == [0] * 25


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 8, 9])
def test_never_exceeds_max_new_tokens_and_stops_exactly_at_eos(max_new_tokens):
    prompt = random_prompt(4, seed=3)
    oracle, reference = oracle_model("oracle", 5, 3, prompt, 40)
    result = space.decode(oracle, prompt, "sdsat", max_new_tokens=max_new_tokens, eos_token_id=[])
    assert result.tokens.tolist() == reference[:max_new_tokens].tolist()
    # the last round drafts only what the budget can take: no forward is wasted on tokens past it
    assert all(n <= max(0, max_new_tokens - done - 2) for n, done in zip(
        result.stats.drafted_per_round, itertools.accumulate([0] + result.stats.tokens_per_round[:-1])))
    # EOS inside an accepted run of drafts (or as t): output ends at it, nothing after it
    for position in (4, 6, 7):
        eos = int(reference[position])
        first = reference.tolist().index(eos)
        result = space.decode(oracle, prompt, "sdsat", max_new_tokens=40, eos_token_id=eos)
        assert result.tokens.tolist() == reference[: first + 1].tolist()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_both_attention_kernels_and_tied_embeddings(attention):
    model = tiny_llama(seed=7, num_layers=3, tie_word_embeddings=True, sat_num=4)
    model.set_attn_implementation(attention)
    prompt = random_prompt(9, seed=7)
    reference = space.decode(model, prompt, "ar", max_new_tokens=30, eos_token_id=[]).tokens
    for use_cache in (True, False):
        result = space.decode(model, prompt, "sdsat", max_new_tokens=30, eos_token_id=[], use_cache=use_cache)
        assert result.tokens.tolist() == reference.tolist()


def test_explicit_options_override_the_config():
    model = tiny_llama(seed=8, sat_num=2)
    prompt = random_prompt(5, seed=8)
    reference = space.decode(model, prompt, "ar", max_new_tokens=20, eos_token_id=[]).tokens
    result = space.decode(model, prompt, "sdsat", max_new_tokens=20, eos_token_id=[], sat_num=6, sat_id=50)
    assert result.tokens.tolist() == reference.tolist()  # any in-range id is lossless, only slower
    assert max(result.stats.drafted_per_round) == 6


# --- KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [None, "exact", "original"])
@pytest.mark.parametrize("max_new_tokens", [1, 2, 9, 23])
def test_cache_holds_the_committed_prefix(monkeypatch, sampling, max_new_tokens):
    """After decoding, the cache equals a fresh prefill of every committed token but the last (SATs and
    rejected drafts gone; with trees, the accepted path's entries moved next to the prefix)."""
    caches = capture_caches(monkeypatch)
    model = tiny_llama(seed=11, sat_num=5)
    prompt = random_prompt(8, seed=11)
    options = dict(do_sample=True, sampling_mode=sampling, seed=3, top_k=4) if sampling else {}
    result = space.decode(model, prompt, "sdsat", max_new_tokens=max_new_tokens, eos_token_id=[], **options)
    cache = caches[-1]
    committed = torch.cat([prompt[0], result.tokens])[:-1]
    fresh = CompactCache.for_model(model, 64)
    with torch.no_grad():
        Model(model).hidden(committed, torch.arange(committed.numel()), cache=fresh)
    for ours, reference in zip(cache.layers, fresh.layers):
        n = reference.length
        assert ours.length == n == 8 + max_new_tokens - 1
        assert torch.allclose(ours.key_buffer[:, :, :n], reference.key_buffer[:, :, :n], atol=1e-5)
        assert torch.allclose(ours.value_buffer[:, :, :n], reference.value_buffer[:, :, :n], atol=1e-5)


# --- token trees (original sampling mode) ------------------------------------------------------

SPEC_TREES = {5: ([4, 8, 8, 5, 3], 17), 7: ([4, 8, 8, 6, 5, 3, 2], 21), 9: ([4, 8, 8, 6, 6, 5, 4, 3, 2], 26),
              11: ([4, 8, 8, 8, 6, 6, 6, 5, 4, 3, 2], 33), 13: ([4, 8, 8, 8, 8, 8, 6, 6, 6, 5, 4, 3, 2], 41)}


@pytest.mark.parametrize("depth", list(range(0, 14)))
def test_tree_buffers(depth):
    tree = build_tree(depth)
    per_depth = [int((tree.depth == d).sum()) for d in range(1, depth + 1)]
    if depth in SPEC_TREES:  # the table of docs/spec/SDSAT.md §5.2
        assert (per_depth, tree.paths.shape[0]) == SPEC_TREES[depth]
    assert tree.depth[0] == 0 and tree.paths.shape[1] == depth + 1
    # parent of each node: the deepest other node it attends to; attention = root + ancestors + itself
    for node in range(1, tree.size):
        seen = tree.allowed[node].nonzero().flatten().tolist()
        assert seen[0] == 0 and seen[-1] == node and len(seen) == int(tree.depth[node]) + 1
        assert [int(tree.depth[s]) for s in seen] == list(range(len(seen)))
    # every path runs root -> leaf through parent-child steps, padding only at the end, and covers every node
    covered = set()
    for row in tree.paths.tolist():
        real = [n for n in row if n >= 0]
        assert row == real + [-1] * (len(row) - len(real)) and real[0] == 0
        for parent, child in zip(real, real[1:]):
            assert tree.allowed[child, parent] and tree.depth[child] == tree.depth[parent] + 1
        covered.update(real)
    assert covered == set(range(tree.size))
    assert tree.needed[0] == 1
    assert all(int(tree.index[tree.depth == d].max()) + 1 == tree.needed[d] for d in range(1, depth + 1))


def test_tree_depth_above_the_templates_is_refused():
    with pytest.raises(space.SpaceError, match="token trees up to depth 13"):
        build_tree(14)


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_same_seed_same_sample(mode):
    model = tiny_llama(seed=4, sat_num=5)
    prompt = torch.tensor([[5, 9, 11]])
    options = dict(max_new_tokens=20, eos_token_id=[], do_sample=True, temperature=0.9, top_p=0.95, sampling_mode=mode)
    first = space.decode(model, prompt, "sdsat", seed=123, **options)
    again = space.decode(model, prompt, "sdsat", seed=123, **options).tokens
    others = {tuple(space.decode(model, prompt, "sdsat", seed=s, **options).tokens.tolist()) for s in range(5)}
    assert first.tokens.tolist() == again.tolist() and len(others) > 1
    check_rounds(first.stats, 5, 20)


def test_original_mode_with_an_oracle_accepts_whole_paths():
    prompt = random_prompt(5, seed=2)
    oracle, reference = oracle_model("oracle", 5, 2, prompt, 30)
    # one-hot SAT rows: every candidate of a depth is the oracle's token; a near-greedy target matches it
    result = space.decode(oracle, prompt, "sdsat", max_new_tokens=30, eos_token_id=[], do_sample=True, seed=0,
                          sampling_mode="original", temperature=1e-3)
    assert result.tokens.tolist() == reference.tolist()
    assert result.stats.tokens_per_round == [7, 7, 7, 7, 2]


# --- the distribution test ---------------------------------------------------------------------

# k = 2 and 4 tokens: the first round alone (t, two drafts, the bonus) can produce the whole output
VOCAB, DRAWS, LENGTH, PROMPT = 12, 1500, 4, torch.tensor([[4, 7, 5]])


def prefixes(dist: dict[tuple, float], n: int) -> dict[tuple, float]:
    """The marginal distribution (or counts) of the first n tokens."""
    marginal = {}
    for key, value in dist.items():
        marginal[key[:n]] = marginal.get(key[:n], 0) + value
    return marginal


def sampled_counts(model, mode, processing) -> dict[tuple, int]:
    counts = {}
    for seed in range(DRAWS):
        result = space.decode(model, PROMPT, "sdsat", max_new_tokens=LENGTH, eos_token_id=[], do_sample=True, seed=seed,
                              sampling_mode=mode, **processing)
        key = tuple(result.tokens.tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("processing", [
    dict(use_cache=True),
    dict(temperature=0.7, top_k=5, top_p=0.9, use_cache=False),
], ids=["plain-cache", "t0.7-k5-p0.9-nocache"])
def test_exact_mode_reproduces_the_model_distribution_and_original_does_not(processing):
    """Chi-square of the first 2, 3 and 4 tokens against the enumerated distribution. The SAT is untrained
    here (a random row): exactness must not depend on draft quality. The first two tokens are where the
    tree's sample-and-match favours drafted tokens (docs/spec/SDSAT.md §5.4), so the original rule fails there."""
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, sat_num=2)
    truth = exact_joint(model, PROMPT, LENGTH,
                        **{key: value for key, value in processing.items() if key != "use_cache"})
    exact = sampled_counts(model, "exact", processing)
    for n in (2, 3, 4):
        assert chi_square_p_value(prefixes(truth, n), prefixes(exact, n), DRAWS) > 1e-4
    original = sampled_counts(model, "original", processing)
    assert chi_square_p_value(prefixes(truth, 2), prefixes(original, 2), DRAWS) < 1e-8


# --- adaptive tokens ---------------------------------------------------------------------------


def test_add_sat_tokens_first_free_id_idempotent_and_recorded(tmp_path):
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    spec = add_sat_tokens(model, tokenizer, sat_num=4)
    assert spec == SatSpec(320, 4) and tokenizer.convert_tokens_to_ids(SAT_TOKEN) == 320
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == 321 and torch.allclose(weight[320], weight[:320].mean(0))
    assert add_sat_tokens(model, tokenizer, sat_num=6) == SatSpec(320, 6) and len(tokenizer) == 321  # no second token
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, _ = space.load_model(tmp_path / "m")
    assert read_sat_spec(loaded.config) == SatSpec(320, 6)
    assert getattr(loaded.config, "mask_id", None) == model.config.mask_id  # SPACE's fields are untouched


def test_add_sat_tokens_explicit_ids():
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    assert add_sat_tokens(model, tokenizer, sat_id=323).sat_id == 323  # fillers 320..322, then the SAT
    assert len(tokenizer) == 324 and model.get_input_embeddings().weight.shape[0] == 324
    # an unused special token of the tokenizer keeps its row (as CodeLlama's slot 32011): no resize, no re-init
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|reserved_0|>"]}, replace_extra_special_tokens=False)
    model.resize_token_embeddings(325)
    row = model.get_input_embeddings().weight[324].clone()
    assert add_sat_tokens(model, tokenizer, sat_id=324, sat_num=2) == SatSpec(324, 2)
    assert torch.equal(model.get_input_embeddings().weight[324], row) and len(tokenizer) == 325


@pytest.mark.parametrize("sat_id,message", [
    (10, "sat_id 10 is the token .* which the tokenizer uses for text"),
    (2, "sat_id 2 is the token '</s>', which the tokenizer uses for text"),  # eos
    (-1, "sat_id must be None or a whole number >= 0"),
])
def test_add_sat_tokens_refuses_text_tokens(sat_id, message):
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=len(tokenizer))
    with pytest.raises(space.SpaceError, match=message) as error:
        add_sat_tokens(model, tokenizer, sat_id=sat_id)
    assert "\n" not in str(error.value)
    with pytest.raises(space.SpaceError, match="sat_num must be a whole number >= 1"):
        add_sat_tokens(model, tokenizer, sat_num=0)


@pytest.mark.parametrize("options,message", [
    (dict(sat_num=0), r"sat_num must be >= 1 \(got 0\)"),
    (dict(sat_id=96), r"sat_id 96 is outside the model vocabulary \[0, 96\)"),
    (dict(sat_id=-3), r"sat_id -3 is outside the model vocabulary"),
    (dict(do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, temperature=0.0), "temperature must be finite and > 0"),
    (dict(do_sample=True, top_k=-1), "top_k must be >= 0"),
    (dict(sampling_mode="tree"), "unknown sampling_mode 'tree'"),
    (dict(do_sample=True, sampling_mode="original", sat_num=14), "token trees up to depth 13"),
])
def test_decode_bad_input(options, message):
    model = tiny_llama(seed=0, sat_num=3)
    with pytest.raises(space.SpaceError, match=message) as error:
        space.decode(model, PROMPT, "sdsat", **options)
    assert "\n" not in str(error.value)


def test_model_without_adaptive_token_is_one_clear_error():
    with pytest.raises(space.SpaceError, match="has no SDSAT adaptive token recorded"):
        space.decode(tiny_llama(seed=0), PROMPT, "sdsat")


# --- SDSAT samples -----------------------------------------------------------------------------

S = 95  # adaptive token id in these examples
SRC = [1, 11, 12]
Y = [20, 21, 22, 23, 24, 25, 2]


def test_sdsat_sample_hand_written_example():
    # real tokens 1 11 12 | 20 21 22 23 24 25 2 at positions 0..9: 10 tokens, one span per 4 -> 2 spans
    config = MaskingConfig(mask_num=3, mask_id=S, sdsat=True, sat_every=4, cutoff_len=64)
    sample = build_sample([(SRC, Y)], config, ScriptedRandom(randints=[2, 3], samples=[5, 3]))
    # span 1 after x_2 (the prompt's last token): SAT_1, SAT_2 at positions 3, 4 learn x_4 = 21, x_5 = 22;
    # span 2 after x_4: SAT_1..SAT_3 at positions 5..7 learn x_6..x_8 = 23, 24, 25. Each has one label carrier.
    assert sample["input_ids"] == SRC + Y + [S] * 3 + [S] * 4
    assert sample["labels"] == [IGNORE] * 3 + Y + [IGNORE, 21, 22] + [IGNORE, 23, 24, 25]
    assert sample["position_ids"] == list(range(10)) + [3, 4, 5] + [5, 6, 7, 8]
    assert sample["segment_ids"] == [0] * 10 + [1] * 3 + [2] * 4
    assert sample["mask_offsets"] == [0] * 10 + [1, 2, 3] + [1, 2, 3, 4]


def test_sdsat_sample_span_count_cutoff_and_short_runs():
    import dataclasses
    import random

    # 10 real tokens and sat_every 64: one span, after x_3; five SATs learn x_5 .. x_9
    config = MaskingConfig(mask_num=5, mask_id=S, sdsat=True, cutoff_len=64)
    sample = build_sample([(SRC, Y)], config, ScriptedRandom(randints=[5], samples=[4]))
    assert sample["input_ids"][10:] == [S] * 6 and sample["labels"][10:] == [IGNORE, 22, 23, 24, 25, 2]
    assert sample["position_ids"][10:] == [4, 5, 6, 7, 8, 9]
    # a span never crosses the end of a response: a 3-token span after x_7 keeps only x_9 = </s>
    config = MaskingConfig(mask_num=3, mask_id=S, sdsat=True, sat_every=4, cutoff_len=64)
    sample = build_sample([(SRC, Y)], config, ScriptedRandom(randints=[1, 3], samples=[8, 3]))
    assert sample["input_ids"][10:] == [S, S] + [S, S] and sample["labels"][10:] == [IGNORE, 21] + [IGNORE, 2]
    # one span per 16 real tokens (133 -> 8), in the room cutoff_len leaves; all targets are real response tokens
    config = MaskingConfig(mask_num=4, mask_id=S, sdsat=True, sat_every=16, cutoff_len=200)
    sample = build_sample([(SRC, list(range(20, 150)))], config, random.Random(0))
    blocks = max(sample["segment_ids"])
    assert sample["segment_ids"].count(0) == 133 and blocks == 8 and len(sample["input_ids"]) <= 200
    # no room left: only 13 slots (2 spans of up to 4 + carrier) -> 2 spans; a full sample clips its tail for one span
    long = [(SRC, list(range(20, 150)))]
    squeezed = build_sample(long, dataclasses.replace(config, cutoff_len=146), random.Random(0))
    assert squeezed["segment_ids"].count(0) == 133 and max(squeezed["segment_ids"]) == 2
    full = build_sample(long, dataclasses.replace(config, cutoff_len=133), random.Random(0))
    assert full["segment_ids"].count(0) == 128 and max(full["segment_ids"]) == 1 and len(full["input_ids"]) <= 133
    for block in range(1, blocks + 1):
        rows = [i for i, s in enumerate(sample["segment_ids"]) if s == block]
        first = sample["position_ids"][rows[0]]
        assert [sample["position_ids"][i] for i in rows] == list(range(first, first + len(rows)))
        targets = [sample["labels"][i] for i in rows[1:]]
        assert targets == sample["input_ids"][first + 1 : first + len(rows)] and IGNORE not in targets


def test_sdsat_config_errors():
    with pytest.raises(space.SpaceError, match="sat_num must be >= 1"):
        MaskingConfig(mask_num=0, sdsat=True).validate()
    with pytest.raises(space.SpaceError, match="sat_every must be >= 1"):
        MaskingConfig(mask_num=3, sdsat=True, sat_every=0).validate()
    with pytest.raises(space.SpaceError, match="cutoff_len 5 is too short"):
        MaskingConfig(mask_num=3, sdsat=True, cutoff_len=5).validate()


def test_training_layout_equals_the_draft_forward():
    """SAT rows of a training sample give the logits of SDSAT's draft forward; real rows those of the plain text."""
    model = tiny_llama(seed=6, sat_num=3)
    sat = model.config.sat_id
    config = MaskingConfig(mask_num=3, mask_id=sat, sdsat=True, sat_every=4, cutoff_len=64)
    sample = build_sample([(SRC, Y)], config, ScriptedRandom(randints=[2, 3], samples=[5, 3]))
    logits = model_logits(model, SarCollator(pad_token_id=0)([sample]))
    real = SRC + Y
    plain = model_logits(model, SarCollator(pad_token_id=0)([dict(input_ids=real, labels=real, mask_offsets=[0] * 10)]))
    assert torch.allclose(logits[:10], plain, atol=1e-5)
    for rows, m, size in [(slice(10, 12), 2, 2), (slice(13, 16), 4, 3)]:  # SAT rows (carriers excluded)
        ids = torch.tensor(real[: m + 1] + [sat] * size)
        with torch.no_grad():
            draft = Model(model).logits(Model(model).hidden(ids, torch.arange(ids.numel())))[-size:]
        assert torch.allclose(logits[rows], draft, atol=1e-5)


# --- training and the CLI ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdsat")
    return dict(base=make_base(root / "base"), data=make_dataset(root / "data.json"))


def train_args(workdir, output, *extra):
    return ["--stage", "sft", "--do_train", "--model_name_or_path", str(workdir["base"]), "--dataset",
            str(workdir["data"]), "--output_dir", str(output), "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3", "--logging_steps", "4", "--save_strategy", "no", "--cutoff_len", "256",
            "--use_cpu", "true", "--report_to", "none", "--seed", "0",
            "--sdsat", "true", "--sat_num", "3", "--sat_every", "8", *extra]


def test_full_sdsat_training_learns_and_decodes_like_ar(workdir, tmp_path):
    trainer = train(train_args(workdir, tmp_path / "out", "--max_steps", "24"))
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["mask_loss_1"] < history[0]["mask_loss_1"] and "mask_acc_3" in history[-1]
    model, tokenizer = space.load_model(tmp_path / "out")
    assert read_sat_spec(model.config) == SatSpec(320, 3) and tokenizer.convert_tokens_to_ids(SAT_TOKEN) == 320
    assert space.read_mask_spec(model.config) is None  # no SPACE masks were added
    prompt = torch.tensor([[1, 50, 60, 70]])
    for use_cache in (True, False):
        result = space.decode(model, prompt, "sdsat", max_new_tokens=24, use_cache=use_cache)
        assert result.tokens.tolist() == space.decode(model, prompt, "ar", max_new_tokens=24).tokens.tolist()


def test_lora_sdsat_trains_adapters_and_the_sat_row(workdir, tmp_path):
    trainer = train(train_args(workdir, tmp_path / "lora", "--max_steps", "8", "--finetuning_type", "lora",
                               "--lora_rank", "4"))
    trainable = [name for name, parameter in trainer.model.named_parameters() if parameter.requires_grad]
    assert any("trainable_tokens" in name for name in trainable)
    assert all("lora_" in name or "trainable_tokens" in name for name in trainable)
    fields = json.loads((tmp_path / "lora" / "space.json").read_text())
    assert (fields["sat_id"], fields["sat_num"]) == (320, 3) and "mask_id" not in fields
    model, _ = space.load_model(tmp_path / "lora")
    base, _ = space.load_model(workdir["base"])
    assert read_sat_spec(model.config) == SatSpec(320, 3)
    mean_row = base.get_input_embeddings().weight.mean(0)  # the SAT row's initialisation
    assert not torch.allclose(model.get_input_embeddings().weight[320], mean_row, atol=1e-4)
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "sdsat", max_new_tokens=20).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=20).tokens.tolist()


@pytest.mark.parametrize("extra,message", [
    (["--sat_id", "10"], "sat_id 10 is the token"),
    (["--sat_num", "0"], "sat_num must be >= 1"),
    (["--cutoff_len", "4"], "cutoff_len 4 is too short"),
    (["--sat_every", "0"], "sat_every must be >= 1"),
])
def test_training_bad_input_gets_one_clear_line(workdir, tmp_path, extra, message):
    with pytest.raises(space.SpaceError, match=message) as error:
        train(train_args(workdir, tmp_path / "bad", "--max_steps", "1", *extra))
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdsat_eval") / "model"
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=2, vocab_size=len(tokenizer) + 1, mask_num=3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_eval_cli_runs_sdsat_variants_and_names_a_missing_token(eval_dir, tmp_path):
    cli = ["--llm_dir", str(eval_dir), "--dataset", "human_eval", "--num_samples", "1", "--max_new_tokens", "10",
           "--output_dir", str(tmp_path / "run"), "--progress", "false", "--warmup", "0", "--pass_at_k", "false"]
    with pytest.raises(space.SpaceError, match="has no SDSAT adaptive token recorded"):
        evaluate_cli(cli + ["--methods", "sdsat,ar"])
    with pytest.raises(space.SpaceError, match=r"unknown method\(s\) \['sdsat@x'\]"):
        evaluate_cli(cli + ["--methods", "sdsat@x,ar"])
    summary = evaluate_cli(cli + ["--methods", "sdsat,sdsat@2,ar", "--sat_id", "320", "--sat_num", "4"])
    for method in ("sdsat", "sdsat@2"):
        assert summary["methods"][method]["identity_rate"] == 1.0
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert config["options"]["sdsat"]["sat_num"] == 4 and config["options"]["sdsat@2"]["sat_num"] == 2


def evaluate_cli(argv: list[str]) -> dict:
    """What `scripts/eval_infer.py` does with these flags."""
    return evaluate(parse_eval_args(argv))
