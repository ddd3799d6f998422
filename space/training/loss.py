"""The SAR-SFT loss (docs/spec/SPACE.md §1.7), pure: weighted token cross-entropy plus per-offset mask metrics.

`loss = sum(w * ce) / count(labelled tokens)`, over shifted logits and labels, where `w` is
`mask_loss_weight` at logits whose *input* token is a mask (`mask_offsets > 0`; this covers every id
of a `mask_diff` range, fixing the original's first-id-only match) and 1 elsewhere. The weight is a
float (the original's integer tensor truncated 0.5 to 0). The divisor is the labelled-token count,
not the weight sum, as in the original. With weight 1 this is the standard mean token CE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from space.training.samples import IGNORE


@dataclass
class MaskMetrics:
    """Sums over the mask predictions at each offset j = 1..k (index j-1): loss, correct top-1, count."""

    loss_sum: torch.Tensor  # [k]
    correct: torch.Tensor  # [k]
    count: torch.Tensor  # [k]


def sar_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask_offsets: torch.Tensor, mask_loss_weight: float = 1.0,
    mask_num: int = 0,
) -> tuple[torch.Tensor, MaskMetrics]:
    logits = logits[:, :-1].float()  # [B, L-1, V]: the logit at i predicts labels[i+1]
    targets = labels[:, 1:]  # [B, L-1]
    offsets = mask_offsets[:, :-1]  # [B, L-1]: offset of the input token at each logit position
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # [B, L-1]
    labelled = targets != IGNORE  # [B, L-1]
    weights = torch.where(offsets > 0, float(mask_loss_weight), 1.0)  # [B, L-1] float
    loss = (ce * weights * labelled).sum() / labelled.sum().clamp(min=1)

    with torch.no_grad():
        per_offset = [labelled & (offsets == j) for j in range(1, mask_num + 1)]  # k x [B, L-1]
        loss_sum = torch.stack([ce[sel].sum() for sel in per_offset]) if per_offset else ce.new_zeros(0)
        correct = torch.stack([(logits[sel].argmax(-1) == targets[sel]).sum() for sel in per_offset]).float() \
            if per_offset else ce.new_zeros(0)
        count = torch.stack([sel.sum() for sel in per_offset]).float() if per_offset else ce.new_zeros(0)
    return loss, MaskMetrics(loss_sum=loss_sum, correct=correct, count=count)
