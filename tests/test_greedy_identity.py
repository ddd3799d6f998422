"""Greedy SPACE equals greedy AR and HF `generate`, token for token, over many configurations."""

import itertools

import pytest
import torch

import space
from space.testing import DraftOracle, tiny_llama
from tests.conftest import random_prompt

# 64 combinations: seed x prompt length x k x cache x mask_diff x attention (GQA/MHA) x EOS placement
CASES = [
    dict(seed=seed, prompt_length=length, k=k, use_cache=use_cache, mask_diff=diff, kv_heads=kv, eos_inside=eos)
    for seed, (length, k, use_cache, diff, kv, eos) in enumerate(
        itertools.islice(
            itertools.product([1, 5, 17], [1, 2, 3, 5], [True, False], [False, True], [2, 4], [False, True]),
            0, None, 3,
        )
    )
]


def case_id(case):
    return "-".join(f"{key}={value}" for key, value in case.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_space_equals_ar_and_hf(case):
    model = tiny_llama(seed=case["seed"], num_kv_heads=case["kv_heads"], mask_num=case["k"],
                       mask_diff=case["mask_diff"])
    prompt = random_prompt(case["prompt_length"], seed=100 + case["seed"])
    common = dict(max_new_tokens=40, use_cache=case["use_cache"], eos_token_id=[])
    reference = space.decode(model, prompt, "ar", **common).tokens
    if case["eos_inside"]:
        common["eos_token_id"] = int(reference[len(reference) // 2])  # a token the model does produce
        reference = space.decode(model, prompt, "ar", **common).tokens
        assert reference[-1] == common["eos_token_id"] and len(reference) <= 40
    hf = space.decode(model, prompt, "hf", **common).tokens
    assert hf.tolist() == reference.tolist()
    for tree in (False, True):  # the paper's chain, then the default candidate tree
        result = space.decode(model, prompt, "space", tree=tree, **common)
        assert result.tokens.tolist() == reference.tolist()
        if not tree:
            assert all(1 <= emitted <= case["k"] + 1 for emitted in result.stats.tokens_per_step)
        assert sum(result.stats.tokens_per_step) == len(result.tokens)
        assert result.stats.steps == len(result.stats.tokens_per_step)


def test_there_are_at_least_50_identity_cases():
    assert len(CASES) >= 50
    assert {case["k"] for case in CASES} == {1, 2, 3, 5}
    for key in ("use_cache", "mask_diff", "eos_inside"):
        assert {case[key] for case in CASES} == {True, False}


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("use_cache", [True, False])
def test_oracle_drafts_give_k_plus_one_tokens_per_step(k, use_cache):
    """The paper's chain (tree=False); the tree's oracle and junk cases are in test_tree.py."""
    inner = tiny_llama(seed=10 + k, mask_num=k)
    oracle = DraftOracle(inner, "oracle")
    prompt = random_prompt(6, seed=k)
    reference = space.decode(oracle, prompt, "ar", max_new_tokens=31, eos_token_id=[]).tokens
    oracle.set_reference(torch.cat([prompt[0], reference]))
    result = space.decode(oracle, prompt, "space", max_new_tokens=31, eos_token_id=[], use_cache=use_cache, tree=False)
    assert result.tokens.tolist() == reference.tolist()
    per_step = result.stats.tokens_per_step
    assert per_step[0] == 1  # the first step has only dummy candidates
    assert all(emitted == k + 1 for emitted in per_step[1:-1])
    # the other 30 tokens come k+1 per step; only the budget cuts the last step short, to what is left
    later_steps = -(-30 // (k + 1))  # ceil(30 / (k+1))
    assert len(per_step) == 1 + later_steps
    assert per_step[-1] == 30 - (k + 1) * (later_steps - 1)
    assert 1 <= per_step[-1] <= k + 1
    assert sum(per_step) == 31


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("use_cache", [True, False])
def test_junk_drafts_give_one_token_per_step(k, use_cache):
    inner = tiny_llama(seed=20 + k, mask_num=k)
    junk = DraftOracle(inner, "junk")
    prompt = random_prompt(6, seed=k)
    reference = space.decode(junk, prompt, "ar", max_new_tokens=25, eos_token_id=[]).tokens
    junk.set_reference(torch.cat([prompt[0], reference]))
    result = space.decode(junk, prompt, "space", max_new_tokens=25, eos_token_id=[], use_cache=use_cache, tree=False)
    assert result.tokens.tolist() == reference.tolist()
    assert result.stats.tokens_per_step == [1] * 25


@pytest.mark.parametrize("max_new_tokens", [1, 2, 5, 7])
def test_never_exceeds_max_new_tokens_and_stops_exactly_at_eos(max_new_tokens):
    inner = tiny_llama(seed=3, mask_num=3)
    oracle = DraftOracle(inner)
    prompt = random_prompt(4, seed=3)
    reference = space.decode(oracle, prompt, "ar", max_new_tokens=40, eos_token_id=[]).tokens
    oracle.set_reference(torch.cat([prompt[0], reference]))
    result = space.decode(oracle, prompt, "space", max_new_tokens=max_new_tokens, eos_token_id=[])
    assert result.tokens.tolist() == reference[:max_new_tokens].tolist()
    # EOS inside an accepted run of candidates: output ends at it, nothing (no pad) after it
    eos = int(reference[6])
    first = reference.tolist().index(eos)
    result = space.decode(oracle, prompt, "space", max_new_tokens=40, eos_token_id=eos)
    assert result.tokens.tolist() == reference[: first + 1].tolist()


def test_tied_embeddings_and_deeper_model():
    model = tiny_llama(seed=7, num_layers=4, tie_word_embeddings=True, mask_num=4)
    prompt = random_prompt(9, seed=7)
    reference = space.decode(model, prompt, "ar", max_new_tokens=30, eos_token_id=[]).tokens
    result = space.decode(model, prompt, "space", max_new_tokens=30, eos_token_id=[])
    assert result.tokens.tolist() == reference.tolist()
