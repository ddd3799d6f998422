"""SPACE with a candidate tree: the layout against hand tables, the copy index against a brute-force search,
tree acceptance (greedy walk, exact multi-candidate sampling with a power check), the shape planner, and the
decoder's identity with AR over a fuzz of trees. The tree's KV cache after every step is checked in
test_space_cache.py, its sampling distribution end to end there too."""

import itertools
import random

import pytest
import torch

import space
from space.decoding import tree as tree_decoder
from space.decoding import verify
from space.decoding.common import Model
from space.decoding.drafts import Drafts
from space.decoding.retrieval import NgramIndex
from space.decoding.row_cost import CostCurve, device_curve, measured_curve
from space.decoding.sampling import Sampler
from space.decoding.tree_layout import tree_layout
from space.decoding.tree_shape import (
    EXPLORE_EVERY,
    AcceptanceRates,
    ShapeConfig,
    next_chain_source,
    plan_tree,
    record_outcome,
)
from space.decoding.verify import accept_tree
from space.testing import DraftOracle, chi_square_p_value, tiny_llama
from tests.conftest import random_prompt
from tests.paper_chain import ChunkLayout, paper_chain

FREE_ROWS = {1: 1.0, 512: 1.0}  # every row free: the planner takes every candidate


def Copy(tokens: tuple, match: int, after: int = 0) -> Drafts:
    """A copy from the context, as `NgramIndex.lookup` proposes it."""
    return Drafts(list(tokens), origin="copy", match=match, after=after)


NO_COPY = Copy((), 0)


def chain_and_runners_up(tokens: list[int], alternatives: list[list[int]] = (), q=None):
    """A chain from slot 0 and, per slot, its runners-up: the slot's best tokens without the chain's own, as many
    as the list holds minus one (what `space.decoding.tree.draft_chain` proposes)."""
    runners_up = []
    for i, best in enumerate(alternatives):
        others = [token for token in best if token != tokens[i]][: len(best) - 1]
        runners_up += [Drafts([token], origin="topk", slot=i, rank=rank, after=i)
                       for rank, token in enumerate(others, 1)]
    return Drafts(list(tokens), q, origin="chain"), runners_up


def plan(root: int, tokens: list[int], alternatives, copies: list, rates, config, sampled=False, q=None):
    """`plan_tree` with copies listed by depth (copy d follows the chain's first d tokens), as the decoder looks
    them up."""
    chain, runners_up = chain_and_runners_up(tokens, alternatives, q)
    copies = [Copy(copy.tokens, copy.match, after=depth) for depth, copy in enumerate(copies)]
    return plan_tree(root, chain, runners_up, copies, rates, config, sampled=sampled)


# --- layout ----------------------------------------------------------------------------------------


def test_layout_of_a_small_tree_matches_the_hand_table():
    # root (group) -> a (group) -> c ; root -> b ; k = 2
    layout = tree_layout([-1, 0, 0, 1], [True, True, False, False], k=2)
    sees = {0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {0, 3}, 4: {0, 3, 4}, 5: {0, 3, 4, 5}, 6: {0, 6}, 7: {0, 3, 7}}
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for row, columns in sees.items():
        expected[row, sorted(columns)] = True
    assert torch.equal(layout.allowed, expected)
    assert layout.position_offsets.tolist() == [0, 1, 2, 1, 2, 3, 1, 2]
    assert layout.node_rows.tolist() == [0, 3, 6, 7]
    assert {node: rows.tolist() for node, rows in layout.group_rows.items()} == {0: [1, 2], 1: [4, 5]}
    assert layout.depths == [0, 1, 1, 2] and layout.size == 8


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_a_chain_with_a_group_on_every_node_is_the_chain_layout(k):
    layout = tree_layout([-1, *range(k)], [True] * (k + 1), k)
    chain = ChunkLayout.build(k)
    assert torch.equal(layout.allowed, chain.allowed)
    assert torch.equal(layout.position_offsets, chain.position_offsets)
    assert torch.equal(layout.node_rows[1:], chain.candidate_rows)
    for g in range(k + 1):
        assert torch.equal(layout.group_rows[g], chain.group_rows(g))


def test_a_tree_without_groups_is_causal_along_each_path():
    layout = tree_layout([-1, 0, 1, 0, 3], [False] * 5, k=3)
    assert layout.size == 5 and layout.position_offsets.tolist() == [0, 1, 2, 1, 2]
    assert layout.allowed[2].tolist() == [True, True, True, False, False]
    assert layout.allowed[4].tolist() == [True, False, False, True, True]


@pytest.mark.parametrize("parents, grouped", [([0], [False]), ([-1, 1], [False, False]), ([-1, 0], [False])])
def test_a_malformed_tree_is_refused(parents, grouped):
    with pytest.raises(ValueError):
        tree_layout(parents, grouped, k=2)


# --- the copy index ---------------------------------------------------------------------------------


def naive_lookup(tokens: list[int], max_ngram: int, max_tokens: int, drafted: tuple = ()) -> Copy:
    """The longest suffix of `tokens + drafted` that occurs in `tokens` with a token after it, latest first."""
    text = tokens + list(drafted)
    for n in range(min(max_ngram, len(text)), 0, -1):
        suffix = text[-n:]
        for end in range(len(tokens) - 2, n - 2, -1):
            if tokens[end - n + 1 : end + 1] == suffix:
                return Copy(tuple(tokens[end + 1 : end + 1 + max_tokens]), n, after=len(drafted))
    return Copy((), 0, after=len(drafted))


def test_the_copy_continues_the_latest_occurrence_of_the_longest_match():
    index = NgramIndex(max_ngram=4)
    index.extend([1, 2, 3, 4, 1, 2, 5, 1, 2])
    assert index.lookup(3) == Copy((5, 1, 2), 2)  # (1, 2) last ended at index 5; (5, 1, 2) never before
    assert index.lookup(3, after=(5,)) == Copy((1, 2), 3, after=1)  # with a drafted 5: (1, 2, 5) matched
    assert index.lookup(0) == NO_COPY
    fresh = NgramIndex(max_ngram=3)
    fresh.extend([1, 2, 3])
    assert fresh.lookup(5) == NO_COPY


def test_the_copy_index_agrees_with_a_brute_force_search():
    rng = random.Random(0)
    for trial in range(200):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(1, 40))]
        max_ngram, max_tokens = rng.randrange(1, 6), rng.randrange(1, 8)
        index = NgramIndex(max_ngram)
        split = rng.randrange(len(tokens) + 1)
        index.extend(tokens[:split])  # indexed in two pieces, as the decoder does
        index.extend(tokens[split:])
        assert index.lookup(max_tokens) == naive_lookup(tokens, max_ngram, max_tokens), (trial, tokens)
        drafted = tuple(rng.randrange(4) for _ in range(rng.randrange(1, 4)))
        assert index.lookup(max_tokens, drafted) == naive_lookup(tokens, max_ngram, max_tokens, drafted), \
            (trial, drafted)


# --- tree acceptance -------------------------------------------------------------------------------


def logits_with_argmax(targets: list[int], vocab: int = 12) -> torch.Tensor:
    logits = torch.zeros(len(targets), vocab)
    logits[torch.arange(len(targets)), torch.tensor(targets)] = 5.0
    return logits


GREEDY = Sampler()


def test_greedy_takes_the_longest_path_the_target_agrees_with():
    # nodes: 0 root, 1 = token 5, 2 = token 7, 3 = token 9 under node 1
    tokens, candidates = [0, 5, 7, 9], [[(1, None), (2, None)], [(3, None)], [], []]
    assert accept_tree(logits_with_argmax([7, 0, 3, 0]), tokens, candidates, GREEDY) == ([2], 3)
    # an oracle branch: accepted to its full depth, then the target's next token
    assert accept_tree(logits_with_argmax([5, 9, 0, 4]), tokens, candidates, GREEDY) == ([1, 3], 4)
    # junk: nothing accepted, the target's own token
    assert accept_tree(logits_with_argmax([1, 0, 0, 0]), tokens, candidates, GREEDY) == ([], 1)


VOCAB = 5


def target_table() -> torch.Tensor:
    """p(next | last token) for every last token (row), a fixed random table."""
    generator = torch.Generator().manual_seed(3)
    return torch.softmax(torch.randn(VOCAB + 1, VOCAB, generator=generator) * 1.5, dim=-1)


def draw_two_tokens(table, q_root, q_deep, generator, rejection) -> tuple[int, int]:
    """One step over a tree with a drawn chain and deterministic siblings, then, if the step gave only one token,
    the next from the target (as the next step would): the first two tokens of the output."""
    chain = int(torch.multinomial(q_root, 1, generator=generator))
    deep = int(torch.multinomial(q_deep, 1, generator=generator))
    # root(last token 5) -> chain (drawn), copy 2, top-k 4; chain -> drawn deep token, copy 1
    tokens = [VOCAB, chain, 2, 4, deep, 1]
    candidates = [[(1, q_root), (2, None), (3, None)], [(4, q_deep), (5, None)], [], [], [], []]
    node_logits = table[tokens].log()
    original = verify._recursive_rejection
    verify._recursive_rejection = rejection
    try:
        path, token = accept_tree(node_logits, tokens, candidates, Sampler(do_sample=True, generator=generator))
    finally:
        verify._recursive_rejection = original
    emitted = [tokens[u] for u in path] + [token]
    if len(emitted) == 1:
        emitted.append(int(torch.multinomial(table[emitted[0]], 1, generator=generator)))
    return emitted[0], emitted[1]


def biased_rejection(p, tokens, children, generator):
    """The rule without the residual: a refused child's mass is kept, so it is drawn again too often."""
    for child, q in children:
        x = tokens[child]
        u = float(torch.rand((), generator=generator))
        if u < float(p[x] / (1.0 if q is None else q[x])):
            return child
    return verify.sample(p, generator)


@pytest.mark.parametrize("rule, passes", [(verify._recursive_rejection, True), (biased_rejection, False)],
                         ids=["exact", "biased"])
def test_multi_candidate_sampling_reproduces_the_target_and_the_test_catches_a_bias(rule, passes):
    table = target_table()
    q_root = torch.tensor([0.1, 0.5, 0.1, 0.2, 0.1])  # a drafter unlike the target
    q_deep = torch.tensor([0.3, 0.1, 0.3, 0.2, 0.1])
    truth = {(a, b): float(table[VOCAB, a] * table[a, b]) for a in range(VOCAB) for b in range(VOCAB)}
    generator = torch.Generator().manual_seed(0)
    draws = 6000
    counts = {}
    for _ in range(draws):
        pair = draw_two_tokens(table, q_root, q_deep, generator, rule)
        counts[pair] = counts.get(pair, 0) + 1
    p_value = chi_square_p_value(truth, counts, draws)
    assert (p_value > 1e-3) if passes else (p_value < 1e-6), p_value


def first_tokens_through_the_planner(p, q, copies, alternatives, rates, price, sampled, draws=4000) -> dict:
    """First emitted token over `draws` steps: a chain token drawn from `q`, the tree planned around it, accepted."""
    config = ShapeConfig(k=0, price=lambda rows: price.get(rows, float(rows)), max_rows=64)
    generator = torch.Generator().manual_seed(0)
    sampler = Sampler(do_sample=True, generator=generator)
    counts = {}
    for _ in range(draws):
        x = int(torch.multinomial(q, 1, generator=generator))
        tree = plan(9, [x], alternatives, copies, rates, config, sampled=sampled, q=q[None])
        path, token = accept_tree(p.log()[None].expand(len(tree.tokens), -1), tree.tokens, tree.candidates, sampler)
        first = tree.tokens[path[0]] if path else token
        counts[(first,)] = counts.get((first,), 0) + 1
    return counts


@pytest.mark.parametrize("sampled", [True, False], ids=["planned-for-sampling", "planned-on-the-drawn-token"])
def test_which_drawn_tokens_are_fed_never_depends_on_their_value(sampled):
    """Were a drawn chain token fed only when it merges with a copy (or only when it is not a runner-up) the output
    would lean toward those values. Planning the chain before looking at the drawn tokens keeps it exact;
    planning on the drawn token (what greedy may do) fails the same test."""
    rates = AcceptanceRates()
    for _ in range(4):
        rates.update(("chain", 0), False)  # a chain rate of 0.25 against a copy prior of 0.6
    p, q = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([0.5, 0.25, 0.25])
    merge = first_tokens_through_the_planner(p, q, [Copy((0,), 6)], [], rates, {1: 1.0, 2: 1.5, 3: 2.5}, sampled)
    p4, q4 = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.4, 0.1, 0.1, 0.4])
    runners_up = first_tokens_through_the_planner(p4, q4, [], [[0, 1, 2]], AcceptanceRates(),
                                                  {2: 1.6, 3: 1.75, 4: 1.75, 5: 1.75}, sampled)
    merge_p = chi_square_p_value({(t,): float(p[t]) for t in range(3)}, merge, 4000)
    assert (merge_p > 1e-3) if sampled else (merge_p < 1e-6), merge_p
    # a fixed number of runners-up per slot, whether or not the drawn token is among the slot's best
    assert chi_square_p_value({(t,): float(p4[t]) for t in range(4)}, runners_up, 4000) > 1e-3


# --- the shape planner -------------------------------------------------------------------------


def shape(k=2, price=lambda rows: 1.0, max_rows=64, **kwargs) -> ShapeConfig:
    return ShapeConfig(k=k, price=price, max_rows=max_rows, **kwargs)


def test_free_rows_take_every_candidate_and_a_group_wherever_a_path_may_end():
    copies = [Copy((5, 7, 7), 3), Copy((6, 1), 2), NO_COPY]
    tree = plan(0, [5, 6], [[5, 8, 9], [6, 3, 4]], copies, AcceptanceRates(), shape())
    # chain 5 -> 6; copy 5 (merged) -> 7 -> 7; copy after 5: 6 (merged) -> 1; runners-up 8, 9 and 3, 4
    assert sorted(tree.tokens[1:]) == sorted([5, 6, 7, 7, 1, 8, 9, 3, 4])
    by_kind = {kind: sum(node.kind == kind for node in tree.nodes) for kind in ("chain", "copy", "topk")}
    assert by_kind == {"chain": 2, "copy": 3, "topk": 4}
    assert tree.grouped[0] and all(tree.grouped)  # a path may end anywhere, so every node gets a group
    merged = tree.nodes[tree.tokens.index(5)]
    assert {key[0] for key in merged.keys} == {"chain", "copy"}


def test_a_price_of_one_forward_per_row_takes_nothing():
    tree = plan(0, [5, 6], [[5, 8], [6, 3]], [Copy((5, 7), 3)], AcceptanceRates(),
                shape(price=lambda rows: float(rows)))
    assert tree.tokens == [0] and tree.grouped == [False]


def test_the_planner_keeps_to_the_row_cap_and_explores_the_root_group():
    chain = [5, 6, 7]
    rates = AcceptanceRates()
    tree = plan(0, chain, [], [Copy(tuple(range(20, 40)), 6)], rates, shape(k=3, max_rows=9))
    layout = tree_layout(tree.parents, tree.grouped, 3)
    assert layout.size <= 9
    steep = plan(0, chain, [], [], rates, shape(k=3, price=lambda rows: float(rows)))
    assert steep.grouped == [False] and steep.tokens == [0]
    rates.steps_without_root_group = EXPLORE_EVERY  # an unused chain is measured again now and then
    assert plan(0, chain, [], [], rates, shape(k=3, price=lambda rows: float(rows))).grouped[0]


def test_a_jump_in_price_is_crossed_when_enough_rows_pay_for_it():
    curve = CostCurve.from_points({1: 1.0, 4: 1.0, 5: 2.0, 64: 2.1})  # rows 2-4 free, then twice the price
    copies = [Copy(tuple(range(20, 36)), 6)]
    rates = AcceptanceRates()
    for depth in range(1, 17):  # copies after a 6-token match were always accepted
        for _ in range(50):
            rates.update(("copy", 6, depth), True)
    tree = plan(0, [], [], copies, rates, shape(k=0, price=curve.price))
    assert len(tree.tokens) == 17  # the whole copy: 16 near-certain tokens pay for the doubled price
    short = plan(0, [], [], [Copy((20, 21, 22, 23, 24, 25), 6)], rates, shape(k=0, price=curve.price))
    assert len(short.tokens) == 4  # six tokens do not: three free rows only


def test_outcomes_update_the_rates_of_every_offered_candidate():
    tree = plan(0, [5, 6], [], [Copy((5, 9), 2)], AcceptanceRates(), shape())
    rates = AcceptanceRates()
    five, six = tree.tokens.index(5), tree.tokens.index(6)
    record_outcome(tree, [five], rates)  # 5 accepted, then 6 and 9 (children of 5) refused
    assert rates.counts[("chain", 0)] == [1, 1] and rates.counts[("copy", 2, 1)] == [1, 1]
    assert rates.counts[("chain", 1)] == [0, 1] and rates.counts[("copy", 2, 2)] == [0, 1]
    assert rates.rate(("chain", 0)) > rates.rate(("chain", 1))
    assert next_chain_source(tree, [five]) == (five, 0)
    assert next_chain_source(tree, [five, six]) == (six, 0)


def test_the_next_chain_comes_from_the_nearest_grouped_ancestor():
    tree = plan(0, [5], [], [Copy((5, 7, 8), 4)], AcceptanceRates(), shape())
    path = [tree.tokens.index(5), tree.tokens.index(7), tree.tokens.index(8)]
    tree.grouped = [True, False, False, False]
    assert next_chain_source(tree, path) == (0, 3)  # the root's slots past depth 3
    tree.grouped = [False] * 4
    assert next_chain_source(tree, path) is None


def test_cost_curves_are_made_monotone_and_priced_against_one_row():
    curve = CostCurve.from_points({1: 30.0, 8: 28.0, 16: 45.0})
    assert curve.measured_ms == [30.0, 30.0, 45.0]
    assert curve.price(1) == 1.0 and curve.price(12) == pytest.approx(37.5 / 30) and curve.price(24) == 2.0
    assert device_curve(torch.device("cpu")).price(8) < device_curve(torch.device("cpu")).price(48)
    with pytest.raises(ValueError):
        CostCurve.from_points({0: 1.0})


def test_a_measured_curve_is_taken_once_per_model():
    model = tiny_llama(seed=1, mask_num=2)
    target = Model(model)
    first = measured_curve(target, 16)
    assert first.rows[0] == 1 and first.rows[-1] == 16 and all(ms > 0 for ms in first.measured_ms)
    assert measured_curve(target, 16) is first


# --- the decoder -------------------------------------------------------------------------------


def repeated_prompt(length: int, seed: int, high: int = 80) -> torch.Tensor:
    """A prompt that repeats itself, so copies match (and often hold)."""
    part = random_prompt(length, seed=seed, high=high)
    return torch.cat([part, part, part[:, : max(length // 2, 1)]], dim=1)


CURVES = {"free": FREE_ROWS, "cpu": None, "steep": {1: 1.0, 2: 1.6, 64: 40.0}}
# 72 cases: seed x k x cache x runners-up x copy length x price
TREE_CASES = [
    dict(seed=seed, k=k, use_cache=cache, branch_width=width, copy_tokens=copy, curve=curve)
    for seed, (k, cache, width, copy, curve) in enumerate(
        itertools.islice(itertools.product([1, 2, 3, 5], [True, False], [0, 2], [0, 4, 24], CURVES), 0, None, 2))
]


@pytest.mark.parametrize("case", TREE_CASES, ids=lambda case: "-".join(f"{k}={v}" for k, v in case.items()))
def test_tree_decoding_equals_ar(case):
    model = tiny_llama(seed=case["seed"], mask_num=case["k"])
    prompt = repeated_prompt(3 + case["seed"] % 7, seed=200 + case["seed"])
    common = dict(max_new_tokens=48, eos_token_id=[], use_cache=case["use_cache"])
    reference = space.decode(model, prompt, "ar", **common).tokens
    result = space.decode(model, prompt, "space", branch_width=case["branch_width"], copy_tokens=case["copy_tokens"],
                          cost_curve=CURVES[case["curve"]], **common)
    assert result.tokens.tolist() == reference.tolist()
    stats = result.stats
    assert sum(stats.tokens_per_step) == len(result.tokens) and stats.steps == len(stats.rows_per_step)
    for accepted, copied, runner_up in zip(stats.accepted_per_step, stats.copy_accepted_per_step,
                                           stats.topk_accepted_per_step):
        assert copied + runner_up <= accepted
    if case["copy_tokens"] == 0:
        assert sum(stats.copy_accepted_per_step) == 0
    if case["branch_width"] == 0:
        assert sum(stats.topk_accepted_per_step) == 0


def test_the_tree_cases_cover_every_setting():
    assert len(TREE_CASES) == 72
    for key, values in [("k", {1, 2, 3, 5}), ("use_cache", {True, False}), ("branch_width", {0, 2}),
                        ("copy_tokens", {0, 4, 24}), ("curve", set(CURVES))]:
        assert {case[key] for case in TREE_CASES} == values, key


def test_copies_are_accepted_where_the_text_repeats():
    """Tiny random models over a small vocabulary fall into loops; the copy branch then carries many tokens."""
    copied = 0
    for seed in range(4):
        model = tiny_llama(seed=seed, mask_num=2, vocab_size=16)
        prompt = repeated_prompt(6, seed=seed, high=12)
        reference = space.decode(model, prompt, "ar", max_new_tokens=80, eos_token_id=[]).tokens
        result = space.decode(model, prompt, "space", max_new_tokens=80, eos_token_id=[], cost_curve=FREE_ROWS)
        assert result.tokens.tolist() == reference.tolist()
        copied += sum(result.stats.copy_accepted_per_step)
        assert max(result.stats.tokens_per_step) <= 1 + 24 + 2  # a copy of 24 past a chain of 2, and the bonus
    assert copied >= 40


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("use_cache", [True, False])
def test_the_faithful_tree_is_the_chain_step_for_step(k, use_cache, monkeypatch):
    """`tree=False` (the one loop in its faithful mode: the chain, every node grouped, first step on mask ids) gives
    the paper's chain step's tokens and steps (`tests.paper_chain`, written from the §3.2 table), with
    1 + k(k+2) rows a step."""
    prompt = random_prompt(5, seed=k)
    inner = tiny_llama(seed=40 + k, mask_num=k)
    oracle = DraftOracle(inner, "oracle")
    reference = space.decode(oracle, prompt, "ar", max_new_tokens=40, eos_token_id=[]).tokens
    oracle.set_reference(torch.cat([prompt[0], reference]))
    sizes = []
    layout_on = tree_decoder.layout_on
    monkeypatch.setattr(tree_decoder, "layout_on",
                        lambda *args: sizes.append(layout_on(*args).size) or layout_on(*args))
    for model in (inner, oracle):
        options = dict(max_new_tokens=30, eos_token_id=[], use_cache=use_cache)
        chain = paper_chain(model, prompt, **options)
        sizes.clear()
        result = space.decode(model, prompt, "space", tree=False, **options)
        assert result.tokens.tolist() == chain.tokens.tolist()
        assert result.stats.tokens_per_step == chain.stats.tokens_per_step
        assert sizes[1:-1] == [1 + k * (k + 2)] * (len(chain.stats.tokens_per_step) - 2)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mode", ["exact", "original"])
def test_the_faithful_tree_draws_the_chains_samples(k, mode):
    """Sampling, the same seed gives the paper's chain step's tokens and steps under both rules: the faithful mode
    draws and tests in the same order."""
    prompt = random_prompt(5, seed=k, high=20)
    model = tiny_llama(seed=50 + k, mask_num=k, vocab_size=24)
    for seed in range(4):
        options = dict(max_new_tokens=24, eos_token_id=[], do_sample=True, seed=seed, sampling_mode=mode, top_k=12)
        chain = paper_chain(model, prompt, **options)
        result = space.decode(model, prompt, "space", tree=False, **options)
        assert result.tokens.tolist() == chain.tokens.tolist()
        assert result.stats.tokens_per_step == chain.stats.tokens_per_step


@pytest.mark.parametrize("k", [2, 3])
def test_oracle_masks_give_their_full_depth_and_junk_masks_nothing(k):
    prompt = random_prompt(6, seed=k)
    for mode in ("oracle", "junk"):
        drafter = DraftOracle(tiny_llama(seed=10 + k, mask_num=k), mode)
        reference = space.decode(drafter, prompt, "ar", max_new_tokens=40, eos_token_id=[]).tokens
        drafter.set_reference(torch.cat([prompt[0], reference]))
        result = space.decode(drafter, prompt, "space", max_new_tokens=40, eos_token_id=[], copy_tokens=0,
                              branch_width=0, cost_curve=FREE_ROWS)
        assert result.tokens.tolist() == reference.tolist()
        per_step = result.stats.tokens_per_step
        if mode == "oracle":  # the first step has no chain; every later one accepts all k, but the budget's
            assert per_step[0] == 1 and all(emitted == k + 1 for emitted in per_step[1:-1])
        else:
            assert per_step == [1] * 40


def test_tree_options_are_checked():
    model = tiny_llama(seed=0, mask_num=2)
    prompt = random_prompt(4, seed=0)
    for options, message in [(dict(copy_tokens=-1), "copy_tokens must be >= 0"), (dict(copy_ngram=0), "copy_ngram"),
                             (dict(branch_width=-2), "branch_width"), (dict(max_tree_rows=0), "max_tree_rows"),
                             (dict(cost_curve={0: 1.0}), "cost_curve must be"), (dict(cost_curve="fast"), "cost_curve"),
                             (dict(acceptance={}), "acceptance must be"), (dict(tree="yes"), "tree must be")]:
        with pytest.raises(space.SpaceError, match=message):
            space.decode(model, prompt, "space", **options)


def test_rates_carried_across_calls_learn_and_change_nothing_in_the_output():
    model = tiny_llama(seed=2, mask_num=2)
    rates = AcceptanceRates()
    for seed in range(3):
        prompt = repeated_prompt(5, seed=seed)
        reference = space.decode(model, prompt, "ar", max_new_tokens=30, eos_token_id=[]).tokens
        result = space.decode(model, prompt, "space", max_new_tokens=30, eos_token_id=[], acceptance=rates)
        assert result.tokens.tolist() == reference.tolist()
    assert sum(offered for _, offered in rates.counts.values()) > 30


def test_runners_up_wider_than_the_vocabulary_offer_every_other_token():
    model = tiny_llama(seed=4, mask_num=2, vocab_size=16)
    prompt = repeated_prompt(5, seed=4, high=12)
    reference = space.decode(model, prompt, "ar", max_new_tokens=24, eos_token_id=[]).tokens.tolist()
    for width in (15, 16, 1000):
        for sampling in ({}, dict(do_sample=True, seed=1)):
            result = space.decode(model, prompt, "space", max_new_tokens=24, eos_token_id=[], branch_width=width,
                                  cost_curve=FREE_ROWS, **sampling)
            if not sampling:
                assert result.tokens.tolist() == reference


def test_the_papers_chain_leaves_carried_rates_alone():
    """The rates plan trees; the paper's chain feeds everything and neither reads nor writes them."""
    model = tiny_llama(seed=2, mask_num=2)
    rates = AcceptanceRates()
    space.decode(model, repeated_prompt(5, seed=1), "space", max_new_tokens=20, eos_token_id=[], acceptance=rates,
                 tree=False)
    assert rates.counts == {} and rates.steps_without_root_group == 0


def test_the_papers_sampling_rule_runs_on_the_chain():
    model = tiny_llama(seed=3, mask_num=2)
    prompt = random_prompt(5, seed=3)
    options = dict(max_new_tokens=12, eos_token_id=[], do_sample=True, seed=4, sampling_mode="original")
    assert not hasattr(space.decode(model, prompt, "space", **options).stats, "rows_per_step")  # the chain's stats
    assert hasattr(space.decode(model, prompt, "space", **dict(options, sampling_mode="exact")).stats, "rows_per_step")
