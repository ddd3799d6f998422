"""SPACE's KV cache after every step, and sampling that runs past cache compactions.

After step i SPACE keeps the committed tokens and moves the accepted candidates' entries next to them
(`CompactCache.compact` in `space.decoding.space`): the cache must then hold exactly what a fresh
prefill of x_0 .. x_{n+a-1} (every committed token but the bonus) would hold, in every layer. The
check runs after each compaction, not only at the end, so a wrong entry that a later step would
overwrite, or an error that only shows up mid-decoding, is still caught.

Three drafters set how much each compaction moves: the random tiny model itself (its untrained masks
are almost always rejected: nothing moves), `DraftOracle` (every candidate accepted: k entries move)
and an oracle copying a partly corrupted reference (anything from 0 to k).
"""

import itertools

import pytest
import torch

import space
from space.cache import CompactCache
from space.decoding.common import Model
from space.testing import DraftOracle, chi_square_p_value, tiny_llama
from tests.conftest import capture_caches, random_prompt


def record_compactions(monkeypatch) -> list[dict]:
    """After every `compact` of a cache SPACE made: prefix, moved count and a copy of the live entries."""
    caches = capture_caches(monkeypatch)
    records = []
    original = CompactCache.compact

    def recording(cache, prefix, sources):
        original(cache, prefix, sources)
        if any(cache is ours for ours in caches):  # only the decoder's own caches, not a reference prefill
            records.append(dict(
                prefix=prefix, moved=len(sources), length=cache.length, layers=[layer.length for layer in cache.layers],
                keys=[layer.key_buffer[:, :, : layer.length].clone() for layer in cache.layers],
                values=[layer.value_buffer[:, :, : layer.length].clone() for layer in cache.layers],
            ))

    monkeypatch.setattr(CompactCache, "compact", recording)
    return records


def corrupt(reference: torch.Tensor, start: int, mask_id: int, seed: int, share: float = 0.35) -> torch.Tensor:
    """`reference` with about `share` of the tokens from `start` on replaced (never by a mask id)."""
    generator = torch.Generator().manual_seed(seed)
    changed = reference.clone()
    hit = torch.rand(reference.numel(), generator=generator) < share
    hit[:start] = False
    changed[hit] = (changed[hit] + 1) % mask_id
    return changed


def make_drafter(drafter: str, k: int, mask_diff: bool, seed: int, prompt: torch.Tensor, **model_options):
    """The model SPACE decodes with and the greedy AR continuation its oracle (if any) copies."""
    inner = tiny_llama(seed=seed, mask_num=k, mask_diff=mask_diff, **model_options)
    if drafter == "model":
        return inner
    oracle = DraftOracle(inner, "oracle")
    reference = space.decode(oracle, prompt, "ar", max_new_tokens=64, eos_token_id=[]).tokens
    sequence = torch.cat([prompt[0], reference])
    if drafter == "mixed":
        sequence = corrupt(sequence, prompt.shape[1], inner.config.mask_id, seed)
    oracle.set_reference(sequence)
    return oracle


def fresh_prefill(model, committed: torch.Tensor) -> CompactCache:
    fresh = CompactCache.for_model(model, committed.numel())
    with torch.no_grad():
        Model(model).hidden(committed, torch.arange(committed.numel()), cache=fresh)
    return fresh


def check_every_compaction(model, prompt, result, records, k, tree=False):
    """Each recorded compaction left x_0 .. x_{n+a-1} of the final sequence, equal to a fresh prefill of it."""
    stats = result.stats
    full = torch.cat([prompt[0], result.tokens])
    assert len(records) == stats.steps - 1  # one compaction after every step but the last
    emitted = list(itertools.accumulate(stats.tokens_per_step))
    reference = fresh_prefill(model, full[:-1])  # causal: entry t depends on x_0 .. x_t only
    for step, record in enumerate(records):
        length = prompt.shape[1] + emitted[step] - 1  # every committed token but this step's bonus
        accepted = stats.accepted_per_step[step]
        assert record["layers"] == [length] * len(reference.layers), f"step {step}"
        assert (record["prefix"], record["moved"]) == (length - accepted, accepted), f"step {step}"
        assert 0 <= accepted <= (len(full) if tree else k)  # a tree's copy branch may pass k
        for layer, (keys, values) in enumerate(zip(record["keys"], record["values"])):
            fresh = reference.layers[layer]
            assert torch.allclose(keys, fresh.key_buffer[:, :, :length], atol=1e-5), f"step {step}, layer {layer} keys"
            assert torch.allclose(values, fresh.value_buffer[:, :, :length], atol=1e-5), \
                f"step {step}, layer {layer} values"


DECODINGS = {
    "greedy": {},
    "exact": dict(do_sample=True, sampling_mode="exact", temperature=0.8, seed=7),
    "original": dict(do_sample=True, sampling_mode="original", top_k=5, seed=11),
}

# 44 combinations: drafter x decoding x k x mask_diff x prompt length (every 5th of the product)
CASES = [
    dict(seed=seed, drafter=drafter, decoding=decoding, k=k, mask_diff=diff, prompt_length=length)
    for seed, (drafter, decoding, k, diff, length) in enumerate(
        itertools.islice(
            itertools.product(["model", "oracle", "mixed"], DECODINGS, [1, 2, 3, 5], [False, True], [1, 6, 17]),
            0, None, 5,
        )
    )
]


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


def ends_mid_step(k: int) -> int:
    """A budget that the oracle's steps (1, then k+1 each) cannot fill exactly: the last step is cut."""
    return 2 + 4 * (k + 1) + k // 2


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cache_after_every_step_is_a_fresh_prefill_of_the_committed_prefix(monkeypatch, case, tree):
    records = record_compactions(monkeypatch)
    k = case["k"]
    prompt = random_prompt(case["prompt_length"], seed=500 + case["seed"])
    if tree:  # repeat the prompt so the copy branch finds matches
        prompt = torch.cat([prompt, prompt, prompt[:, : max(prompt.shape[1] // 2, 1)]], dim=1)
    model = make_drafter(case["drafter"], k, case["mask_diff"], 30 + case["seed"], prompt)
    max_new_tokens = ends_mid_step(k)
    result = space.decode(model, prompt, "space", max_new_tokens=max_new_tokens, eos_token_id=[], tree=tree,
                          **DECODINGS[case["decoding"]])
    assert len(result.tokens) == max_new_tokens
    check_every_compaction(model, prompt, result, records, k, tree)
    if case["drafter"] == "oracle" and case["decoding"] == "greedy" and not tree:
        assert [r["moved"] for r in records] == [0] + [k] * (len(records) - 1)  # the first step has only dummies
        assert result.stats.tokens_per_step[-1] == 1 + k // 2 < k + 1  # the budget ended it mid-step


def test_the_cache_cases_cover_every_setting():
    assert len(CASES) >= 40
    for key, values in [("drafter", {"model", "oracle", "mixed"}), ("decoding", set(DECODINGS)), ("k", {1, 2, 3, 5}),
                        ("mask_diff", {False, True}), ("prompt_length", {1, 6, 17})]:
        assert {case[key] for case in CASES} == values, key
    assert {(case["drafter"], case["decoding"]) for case in CASES} == set(itertools.product(
        ["model", "oracle", "mixed"], DECODINGS))


def test_the_cases_move_entries_in_every_decoding(monkeypatch):
    """The corrupted oracle gives compactions that move some but not all candidates, in every decoding mode."""
    moved = {}
    for decoding, options in DECODINGS.items():
        records = record_compactions(monkeypatch)
        prompt = random_prompt(6, seed=1)
        model = make_drafter("mixed", 4, False, 3, prompt)
        result = space.decode(model, prompt, "space", max_new_tokens=40, eos_token_id=[], tree=False, **options)
        check_every_compaction(model, prompt, result, records, 4)
        moved[decoding] = {record["moved"] for record in records}
        monkeypatch.undo()
    for decoding, counts in moved.items():
        assert 0 in counts and any(0 < count < 4 for count in counts), (decoding, counts)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3])
def test_short_budgets_compact_only_between_steps(monkeypatch, max_new_tokens):
    records = record_compactions(monkeypatch)
    prompt = random_prompt(5, seed=2)
    model = make_drafter("oracle", 3, True, 4, prompt)
    result = space.decode(model, prompt, "space", max_new_tokens=max_new_tokens, eos_token_id=[], tree=False)
    assert result.stats.tokens_per_step == [1, max_new_tokens - 1][: 1 + (max_new_tokens > 1)]
    check_every_compaction(model, prompt, result, records, 3)


def test_eos_inside_accepted_candidates_ends_without_a_stale_compaction(monkeypatch):
    """The step that emits EOS returns before compacting; every earlier step still left the right cache."""
    records = record_compactions(monkeypatch)
    prompt = random_prompt(4, seed=3)
    model = make_drafter("oracle", 4, False, 6, prompt)
    reference = space.decode(model, prompt, "ar", max_new_tokens=40, eos_token_id=[]).tokens
    eos = int(reference[8])  # steps emit tokens 0, 1 .. 5, 6 .. 10: token 8 is the third step's c_2
    assert reference.tolist().index(eos) == 8
    result = space.decode(model, prompt, "space", max_new_tokens=40, eos_token_id=eos, tree=False)
    assert result.tokens.tolist() == reference[:9].tolist()
    assert result.stats.tokens_per_step == [1, 5, 3] and result.stats.accepted_per_step == [0, 4, 3]
    check_every_compaction(model, prompt, result, records, 4)


# --- sampling past compactions -----------------------------------------------------------------


@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
@pytest.mark.parametrize("mode", ["exact", "original"])
@pytest.mark.parametrize("k", [2, 4])
def test_cached_and_uncached_sampling_agree_past_compactions(monkeypatch, mode, k, tree):
    """Same seed, same tokens with and without the cache, over decodings whose compactions move entries.

    A 16-token vocabulary and top-3 keep the sampled text close enough to the oracle's reference that
    candidates are often accepted after the first one."""
    records = record_compactions(monkeypatch)
    prompt = random_prompt(5, seed=k, high=10)
    model = make_drafter("oracle", k, k == 4, 40 + k, prompt, vocab_size=16, hidden_size=32)
    moved = []
    for seed in range(8):
        options = dict(max_new_tokens=24, eos_token_id=[], do_sample=True, seed=seed, sampling_mode=mode, top_k=3,
                       tree=tree)
        records.clear()
        cached = space.decode(model, prompt, "space", use_cache=True, **options)
        check_every_compaction(model, prompt, cached, records, k, tree)
        moved += [record["moved"] for record in records]
        uncached = space.decode(model, prompt, "space", use_cache=False, **options)
        assert cached.tokens.tolist() == uncached.tokens.tolist(), f"seed {seed}"
        assert cached.stats.accepted_per_step == uncached.stats.accepted_per_step, f"seed {seed}"
    # the comparison really ran past compactions that moved entries, more than one of them at a time too
    assert sum(count > 0 for count in moved) >= 10 and max(moved) >= 2


# the distribution test: 5 tokens over a 12-token vocabulary, top-3, k = 2, drafts from the oracle
VOCAB, K, LENGTH, DRAWS, TOP_K = 12, 2, 5, 1500, 3
PROMPT = torch.tensor([[4, 7, 5]])


def exact_joint_of(model, prompt, length, top_k) -> dict[tuple, float]:
    """P(x_1 .. x_length) of AR sampling through `Model` (a `DraftOracle` has no plain forward)."""
    from space.decoding.sampling import probabilities

    target = Model(model)
    dist = {(): 1.0}
    for _ in range(length):
        grown = {}
        for prefix, mass in dist.items():
            ids = torch.cat([prompt[0], torch.tensor(prefix, dtype=torch.long)])
            with torch.no_grad():
                logits = target.logits(target.hidden(ids, torch.arange(ids.numel()))[-1:])[0]
            probs = probabilities(logits, 1.0, top_k, 1.0)
            for token in probs.nonzero().flatten().tolist():
                grown[prefix + (token,)] = mass * float(probs[token])
        dist = grown
    return dist


def distribution_model():
    inner = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, mask_num=K)
    oracle = DraftOracle(inner, "oracle")
    reference = space.decode(oracle, PROMPT, "ar", max_new_tokens=LENGTH + 4, eos_token_id=[]).tokens
    oracle.set_reference(torch.cat([PROMPT[0], reference]))
    return oracle


@pytest.mark.slow
@pytest.mark.parametrize("tree", [False, True], ids=["chain", "tree"])
def test_exact_sampling_past_compactions_reproduces_the_model_distribution(monkeypatch, tree):
    records = record_compactions(monkeypatch)
    model = distribution_model()
    truth = exact_joint_of(model, PROMPT, LENGTH, TOP_K)
    counts, moved = {}, 0
    for seed in range(DRAWS):
        records.clear()
        result = space.decode(model, PROMPT, "space", max_new_tokens=LENGTH, eos_token_id=[], do_sample=True,
                              seed=seed, top_k=TOP_K, use_cache=True, tree=tree)
        moved += sum(record["moved"] > 0 for record in records)
        key = tuple(result.tokens.tolist())
        counts[key] = counts.get(key, 0) + 1
    assert moved >= DRAWS // 4  # accepted candidates were moved in the cache and sampled after, many times
    assert chi_square_p_value(truth, counts, DRAWS) > 1e-4
