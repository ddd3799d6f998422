"""Sampling: logits processing, acceptance rules, seeding, and the distribution test.

The distribution test is the one that matters for `exact` mode: the empirical joint distribution of
the first tokens must match the model's own (computed exactly by enumeration), and the same test
must reject the paper's `original` rule, which shows it has power.
"""

import pytest
import torch

import space
from space.decoding.sampling import probabilities
from space.decoding.verify import greedy_accept, original_accept, speculative_accept
from space.testing import chi_square_p_value, exact_joint, tiny_llama


def test_probabilities_match_hf_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 10, 0.6)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        assert torch.allclose(probabilities(logits, temperature, top_k, top_p), scores.softmax(-1), atol=1e-6)


def test_a_vanishing_temperature_is_the_argmax_not_nan():
    """Scores past fp32's range made softmax return NaN (inf - inf) and multinomial raise; a row's own largest
    logit is subtracted first then, and a normal temperature keeps its exact values."""
    torch.manual_seed(0)
    logits = torch.randn(3, 40) * 4
    logits[1, 7] = float("-inf")  # a suppressed token stays impossible
    for temperature in (1e-30, 1e-45):
        probs = probabilities(logits, temperature)
        assert torch.isfinite(probs).all()
        assert torch.equal(probs.argmax(-1), logits.argmax(-1)) and torch.allclose(probs.max(-1).values,
                                                                                   torch.ones(3))
    assert torch.equal(probabilities(logits, 0.7), (logits / 0.7).softmax(-1))
    model, prompt = tiny_llama(seed=1), torch.tensor([[5, 6, 7, 8]])
    greedy = space.decode(model, prompt, "ar", max_new_tokens=10, eos_token_id=[]).tokens
    for method in ("ar", "space"):
        cold = space.decode(model, prompt, method, max_new_tokens=10, eos_token_id=[], do_sample=True,
                            temperature=1e-40, seed=3).tokens
        assert torch.equal(cold, greedy)


def test_greedy_accept_prefix_and_bonus():
    assert greedy_accept(torch.tensor([5, 6, 7, 8]), torch.tensor([5, 6, 7])) == (3, 8)
    assert greedy_accept(torch.tensor([5, 6, 7, 8]), torch.tensor([5, 9, 7])) == (1, 6)
    assert greedy_accept(torch.tensor([5, 6]), torch.tensor([4])) == (0, 5)


def test_speculative_accept_keeps_drafts_that_target_prefers():
    # p puts all mass on the drafted tokens: every draft is kept, the bonus comes from p_k
    p = torch.zeros(3, 4)
    p[0, 1] = p[1, 2] = p[2, 3] = 1.0
    q = torch.full((2, 4), 0.25)
    assert speculative_accept(p, q, torch.tensor([1, 2]), torch.Generator().manual_seed(0)) == (2, 3)
    # p gives the draft zero mass: it is rejected and the residual (p - q)+ can only give token 0
    p = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25] * 4])
    q = torch.tensor([[0.0, 0.5, 0.5, 0.0]])
    assert speculative_accept(p, q, torch.tensor([1]), torch.Generator().manual_seed(0)) == (0, 0)


def test_original_rule_resamples_from_p_not_the_residual():
    p = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25] * 4])
    outcomes = {original_accept(p, torch.tensor([0.5]), torch.tensor([1]), torch.Generator().manual_seed(s))[1]
                for s in range(50)}
    assert outcomes == {0, 2}  # token 2 is possible here, never with the residual rule


@pytest.mark.parametrize("method,mode", [("space", "exact"), ("space", "original"), ("ar", None)])
def test_same_seed_same_output(method, mode):
    model = tiny_llama(seed=4, mask_num=3)
    prompt = torch.tensor([[5, 9, 11]])
    options = dict(max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.95)
    if mode is not None:  # AR has no sampling_mode
        options["sampling_mode"] = mode
    first = space.decode(model, prompt, method, seed=123, **options).tokens
    again = space.decode(model, prompt, method, seed=123, **options).tokens
    other = [space.decode(model, prompt, method, seed=s, **options).tokens.tolist() for s in range(5)]
    assert first.tolist() == again.tolist()
    assert len({tuple(o) for o in other}) > 1


# --- the distribution test ---------------------------------------------------------------------

VOCAB, K, LENGTH, DRAWS = 12, 2, 3, 1500
PROMPT = torch.tensor([[4, 7, 5]])


def sampled_counts(model, method, mode, **processing) -> dict:
    """`mode`: SPACE's sampling_mode; None for AR, which has none."""
    counts = {}
    if mode is not None:
        processing = dict(processing, sampling_mode=mode)
    for seed in range(DRAWS):
        result = space.decode(model, PROMPT, method, max_new_tokens=LENGTH, eos_token_id=[], do_sample=True,
                              seed=seed, **processing)
        key = tuple(result.tokens.tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("processing", [{}, dict(temperature=0.7, top_k=5, top_p=0.9)], ids=["plain", "t0.7-k5-p0.9"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_exact_mode_reproduces_the_model_distribution_and_original_does_not(processing, use_cache):
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, mask_num=K)
    truth = exact_joint(model, PROMPT, LENGTH, processing.get("temperature", 1.0), processing.get("top_k", 0),
                        processing.get("top_p", 1.0))
    processing = dict(processing, use_cache=use_cache)
    assert chi_square_p_value(truth, sampled_counts(model, "space", "exact", **processing), DRAWS) > 1e-4
    assert chi_square_p_value(truth, sampled_counts(model, "space", "original", **processing), DRAWS) < 1e-8


@pytest.mark.slow
def test_ar_sampling_reproduces_the_model_distribution():
    model = tiny_llama(seed=5, vocab_size=VOCAB, hidden_size=32, mask_num=K)
    truth = exact_joint(model, PROMPT, LENGTH, 1.0, 0, 1.0)
    assert chi_square_p_value(truth, sampled_counts(model, "ar", None), DRAWS) > 1e-4
