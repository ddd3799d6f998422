"""Explain greedy answers that differ from AR: is the first differing token a numerical near-tie?

A lossless decoder computes the same logits as AR, but over a different batch shape (a chunk of
rows instead of one row), so fp32 logits differ in their last bits. Where AR's top-2 logits at a
step are closer than that noise, the two decoders may pick different tokens and the texts part
legitimately from there on. A logic error shows up differently: AR's token clearly wins at the
step where the method left it.

`explain` re-runs the model on the prompt plus the common prefix (one plain forward) and reports,
at the first differing position, the logit gap between AR's token and the method's token. The
noise, and so the near-tie threshold, grows with the precision lost in the model's dtype.
"""

from __future__ import annotations

import torch

from space.decoding.common import Model

# Per dtype, about twice the largest logit difference measured between forwards of different shapes on the
# shipped model (scripts/measure_logit_noise.py, docs/results/logit_noise.json: fp32 1.8e-4, bf16 1.2). fp16
# keeps 3 more mantissa bits than bf16, so an eighth of bf16's. Below it, a different argmax is rounding, not logic.
NEAR_TIE = 4e-4  # fp32
NEAR_TIE_BY_DTYPE = {torch.float32: NEAR_TIE, torch.bfloat16: 2.5, torch.float16: 0.3}


def near_tie_threshold(dtype: torch.dtype) -> float:
    """The logit gap below which a differing argmax is rounding noise for a model computed in `dtype`."""
    if dtype in NEAR_TIE_BY_DTYPE:
        return NEAR_TIE_BY_DTYPE[dtype]
    # another float type: scale fp32's threshold by its machine epsilon
    return NEAR_TIE * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps


def first_difference(ids: list[int], reference: list[int]) -> int | None:
    """Index of the first position where the two id lists differ (a length difference counts); None if equal."""
    for index, (a, b) in enumerate(zip(ids, reference)):
        if a != b:
            return index
    return None if len(ids) == len(reference) else min(len(ids), len(reference))


@torch.inference_mode()
def explain(model, prompt_ids: torch.Tensor, ids: list[int], reference: list[int],
            threshold: float | None = None) -> dict | None:
    """Where `ids` (a method's answer) leaves `reference` (AR's) and whether that step is a near-tie.

    `prompt_ids` is the `[1, n]` prompt both answered; `threshold` defaults to the model dtype's
    `near_tie_threshold`. Returns None when the answers are equal.
    """
    index = first_difference(ids, reference)
    if index is None:
        return None
    target = Model(model)
    if threshold is None:
        threshold = near_tie_threshold(target.dtype)
    sequence = torch.cat([prompt_ids[0].to(target.device), torch.tensor(reference[:index], device=target.device)])
    hidden = target.hidden(sequence, torch.arange(sequence.numel(), device=target.device))
    logits = target.logits(hidden[-1:])[0]  # [V] AR's logits at the first differing step
    top2 = logits.topk(2)
    result = dict(position=index, top2_gap=float(top2.values[0] - top2.values[1]), near_tie_threshold=threshold)
    if index < len(ids) and index < len(reference):
        ours, theirs = ids[index], reference[index]
        gap = float(logits[theirs] - logits[ours])
        result.update(ar_token=theirs, method_token=ours, logit_gap=gap, near_tie=abs(gap) < threshold)
    else:  # one answer is a prefix of the other: only a budget or EOS difference, never a token choice
        result.update(ar_token=reference[index] if index < len(reference) else None,
                      method_token=ids[index] if index < len(ids) else None, logit_gap=None, near_tie=False)
    return result
