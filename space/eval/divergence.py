"""Explain greedy answers that differ from AR: is the first differing token a numerical near-tie?

A lossless decoder computes the same logits as AR, but over a different batch shape (a chunk of
rows instead of one row), so fp32 logits differ in their last bits. Where AR's top-2 logits at a
step are closer than that noise, the two decoders may pick different tokens and the texts part
legitimately from there on. A logic error shows up differently: AR's token clearly wins at the
step where the method left it.

`explain` re-runs the model on the prompt plus the common prefix (one plain forward) and reports,
at the first differing position, the logit gap between AR's token and the method's token.
"""

from __future__ import annotations

import torch

from space.decoding.common import Model

NEAR_TIE = 1e-4  # logit gap below which a different argmax is rounding, not logic


def first_difference(ids: list[int], reference: list[int]) -> int | None:
    """Index of the first position where the two id lists differ (a length difference counts); None if equal."""
    for index, (a, b) in enumerate(zip(ids, reference)):
        if a != b:
            return index
    return None if len(ids) == len(reference) else min(len(ids), len(reference))


@torch.inference_mode()
def explain(model, prompt_ids: torch.Tensor, ids: list[int], reference: list[int], threshold: float = NEAR_TIE) -> dict | None:
    """Where `ids` (a method's answer) leaves `reference` (AR's) and whether that step is a near-tie.

    `prompt_ids` is the `[1, n]` prompt both answered. Returns None when the answers are equal.
    """
    index = first_difference(ids, reference)
    if index is None:
        return None
    target = Model(model)
    sequence = torch.cat([prompt_ids[0].to(target.device), torch.tensor(reference[:index], device=target.device)])
    hidden = target.hidden(sequence, torch.arange(sequence.numel(), device=target.device))
    logits = target.logits(hidden[-1:])[0]  # [V] AR's logits at the first differing step
    top2 = logits.topk(2)
    result = dict(position=index, top2_gap=float(top2.values[0] - top2.values[1]))
    if index < len(ids) and index < len(reference):
        ours, theirs = ids[index], reference[index]
        gap = float(logits[theirs] - logits[ours])
        result.update(ar_token=theirs, method_token=ours, logit_gap=gap, near_tie=abs(gap) < threshold)
    else:  # one answer is a prefix of the other: only a budget or EOS difference, never a token choice
        result.update(ar_token=reference[index] if index < len(reference) else None,
                      method_token=ids[index] if index < len(ids) else None, logit_gap=None, near_tie=False)
    return result
