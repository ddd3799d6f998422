"""The near-tie analysis of answers that differ from AR (`space.eval.divergence`)."""

import json

import torch

import space
from space.bench.logit_noise import measure_logit_noise, parse_logit_noise_args
from space.decoding.common import Model
from space.eval.divergence import NEAR_TIE, explain, first_difference, near_tie_threshold
from space.testing import tiny_llama, tiny_text_tokenizer


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def _ar_answer(model, prompt):
    return space.decode(model, prompt, "ar", max_new_tokens=8, eos_token_id=[]).tokens.tolist()


def test_a_clear_win_left_is_not_a_near_tie():
    model = tiny_llama(seed=3)
    prompt = torch.tensor([[1, 10, 20, 30]])
    reference = _ar_answer(model, prompt)
    assert explain(model, prompt, reference, reference) is None
    # swap AR's token at step 3 for its runner-up: the report gives the true top-2 gap
    with torch.inference_mode():
        logits = model(torch.tensor([[1, 10, 20, 30] + reference[:3]])).logits[0, -1]
    runner_up = int(logits.topk(2).indices[1])
    wrong = reference[:3] + [runner_up] + reference[4:]
    report = explain(model, prompt, wrong, reference)
    assert report["position"] == 3 and report["ar_token"] == reference[3] and report["method_token"] == runner_up
    assert abs(report["logit_gap"] - report["top2_gap"]) < 1e-5
    assert report["logit_gap"] > NEAR_TIE and not report["near_tie"]


def test_an_exact_tie_is_reported_as_a_near_tie():
    model = tiny_llama(seed=4)
    prompt = torch.tensor([[1, 11, 22]])
    reference = _ar_answer(model, prompt)
    chosen, twin = reference[2], next(t for t in range(3, 90) if t not in reference)
    with torch.no_grad():  # token `twin` gets the lm_head row of AR's token at step 2: equal logits there
        model.lm_head.weight[twin] = model.lm_head.weight[chosen]
    reference = _ar_answer(model, prompt)  # AR takes the lower id of the tied pair
    other = twin if reference[2] == chosen else chosen
    report = explain(model, prompt, reference[:2] + [other], reference[:3])
    assert report["position"] == 2 and report["logit_gap"] == 0.0 and report["near_tie"]


def test_near_tie_threshold_grows_with_the_dtypes_rounding():
    fp32, fp16, bf16 = (near_tie_threshold(d) for d in (torch.float32, torch.float16, torch.bfloat16))
    assert fp32 == NEAR_TIE < fp16 < bf16
    assert near_tie_threshold(torch.float64) < fp32  # unlisted dtypes scale with their epsilon


def test_a_bf16_sized_gap_is_a_near_tie_in_bf16_only():
    model = tiny_llama(seed=5).to(torch.bfloat16)
    prompt = torch.tensor([[1, 12, 24, 36]])
    reference = _ar_answer(model, prompt)
    chosen, twin = reference[1], next(t for t in range(3, 90) if t not in reference)
    target = Model(model)
    with torch.inference_mode():
        hidden = target.hidden(torch.tensor([1, 12, 24, 36] + reference[:1]), torch.arange(5))[-1:]
        top = float(target.logits(hidden)[0, chosen])
    with torch.no_grad():  # `twin` scores about 0.5 below AR's token: inside bf16 noise, far outside fp32's
        model.lm_head.weight[twin] = model.lm_head.weight[chosen] * (1 - 0.5 / top)
    report = explain(model, prompt, reference[:1] + [twin], reference)
    assert report["near_tie_threshold"] == near_tie_threshold(torch.bfloat16)
    assert NEAR_TIE < report["logit_gap"] < near_tie_threshold(torch.bfloat16) and report["near_tie"]
    assert not explain(model, prompt, reference[:1] + [twin], reference, threshold=NEAR_TIE)["near_tie"]
    far = int(target.logits(hidden.detach())[0].argmin())  # the clearly losing token is never a near-tie
    assert not explain(model, prompt, reference[:1] + [far], reference)["near_tie"]


def test_logit_noise_measures_fp32_noise_below_the_near_tie_threshold(tmp_path):
    tokenizer = tiny_text_tokenizer()
    tiny_llama(seed=5, vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    record = measure_logit_noise(parse_logit_noise_args(["--model", str(tmp_path / "model"),
                                                         "--dtypes", "float32", "--num_samples", "1",
                                                         "--output", str(tmp_path / "noise.json")]))
    assert json.loads((tmp_path / "noise.json").read_text()) == record
    noise = record["noise"]["float32"]
    assert noise["positions"] > 10 and 0 <= noise["p99"] <= noise["max"] < NEAR_TIE
