"""The sampler head's training half: its training loop and its measurement, on mask rows of a frozen model.

The model never changes, so its mask rows are computed once (`space.training.sampler_head` collects them from
the multi-block samples of training): each row keeps a mask's final hidden state with the token before its
target (`x_{p+j-1}`, the real token the mask stands in for) and the target `x_{p+j}`. The head then trains on
those rows alone (`train_head`: cross-entropy through the model's lm_head, which stays frozen): minutes on a
CPU, where a forward of the model per batch would take hours.

`measure` reports, per prompt group and offset, the top-1 accuracy of the plain mask logits and of the head (the
head's given the true previous token), how often a chain's first j slots are all right (`reach j`), and the
tokens a chain step of width k accepts on average, `sum_j reach_j` over whole blocks. With the head the reach
is exact for decoding, not an estimate: slot j sees the true previous token exactly when every slot before it
was right, and a chain stops at its first wrong slot anyway. Only the reach compares the two drafters fairly:
the head's accuracy at offset j > 1 is conditioned on a right previous token, the plain masks' is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from space.adapters.sampler_head import SamplerHead, SamplerHeadConfig


@dataclass
class MaskRows:
    """One row per scored mask: its final hidden state, the token before its target, the target, its offset
    (1-based slot), its block (rows of a block are consecutive, offsets 1..) and its prompt group's index."""

    hidden: torch.Tensor  # [N, H]
    previous: torch.Tensor  # [N]
    target: torch.Tensor  # [N]
    offset: torch.Tensor  # [N]
    block: torch.Tensor  # [N]
    group: torch.Tensor  # [N], index into the groups the rows were collected with

    def __len__(self) -> int:
        return self.target.shape[0]

    def save(self, path: Path) -> None:
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        torch.save(vars(self), partial)
        partial.replace(path)  # a kill mid-save leaves the old file or none, never half of one

    @classmethod
    def load(cls, path: Path) -> "MaskRows":
        return cls(**torch.load(path, weights_only=True))


@dataclass
class HeadTraining:
    """The head's training settings."""

    inner: int = 576
    candidates: int = 32
    epochs: float = 2.0
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    history: list[dict] = field(default_factory=list)


def head_loss(head: SamplerHead, hidden: torch.Tensor, previous: torch.Tensor, target: torch.Tensor, embed_weight,
              head_weight) -> torch.Tensor:
    """Cross-entropy of the head's logits over the full vocabulary (lm_head frozen, products in its dtype)."""
    corrected = head(hidden.float(), F.embedding(previous, embed_weight).float())
    logits = (corrected.to(head_weight.dtype) @ head_weight.T).float()
    return F.cross_entropy(logits, target)


def train_head(rows: MaskRows, embed_weight: torch.Tensor, head_weight: torch.Tensor, settings: HeadTraining,
               progress: bool = True) -> SamplerHead:
    """A head trained on `rows` (AdamW, cosine schedule, fp32 head, lm_head and embeddings frozen)."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    head = SamplerHead(rows.hidden.shape[1], SamplerHeadConfig(settings.inner, settings.candidates)).float().train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = max(1, round(settings.epochs * steps_per_epoch))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    order = torch.empty(0, dtype=torch.long)
    bar = tqdm(range(total), desc="sampler head", disable=None if progress else True)
    start, running = time.perf_counter(), 0.0
    for step in bar:
        if order.numel() < settings.batch_size:
            order = torch.cat([order, torch.randperm(len(rows), generator=generator)])
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        loss = head_loss(head, rows.hidden[batch], rows.previous[batch], rows.target[batch], embed_weight, head_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % max(1, total // 20) == 0 or step + 1 == total:
            settings.history.append(dict(step=step + 1, loss=round(running, 4),
                                         seconds=round(time.perf_counter() - start, 1)))
    return head.eval().requires_grad_(False)


@torch.inference_mode()
def predictions(rows: MaskRows, head_weight: torch.Tensor, embed_weight: torch.Tensor, head: SamplerHead | None,
                candidates: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 of the plain mask logits, and of the head over each row's `candidates` best plain tokens (teacher
    forced: the true previous token), both `[N]`; fp32 products, as decoding computes them."""
    weight = head_weight.float()
    plain, refined = [], []
    for start in range(0, len(rows), chunk):
        hidden = rows.hidden[start : start + chunk].float()
        logits = hidden @ weight.T
        plain.append(logits.argmax(-1))
        if head is None:
            continue
        shortlist = logits.topk(min(candidates, logits.shape[-1]), dim=-1).indices  # [c, m]
        corrected = head.float()(hidden, F.embedding(rows.previous[start : start + chunk], embed_weight).float())
        scores = torch.einsum("ch,cmh->cm", corrected, weight[shortlist])
        refined.append(shortlist.gather(1, scores.argmax(-1, keepdim=True))[:, 0])
    plain = torch.cat(plain)
    return plain, (torch.cat(refined) if refined else plain)


def block_table(rows: MaskRows, right: torch.Tensor, width: int, groups: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per group (`groups[i]` for rows of group index i): `[blocks, width]` right/wrong of the blocks that score all
    `width` offsets."""
    tables = {}
    for index, group in enumerate(groups):
        chosen = (rows.group == index) & (rows.offset <= width)
        blocks, offsets, hits = rows.block[chosen], rows.offset[chosen], right[chosen]
        if blocks.numel() == 0:
            continue
        ids, inverse = blocks.unique(return_inverse=True)
        table = torch.zeros(len(ids), width, dtype=torch.bool)
        seen = torch.zeros(len(ids), width, dtype=torch.bool)
        table[inverse, offsets - 1] = hits
        seen[inverse, offsets - 1] = True
        tables[group] = table[seen.all(dim=1)]
    return tables


def measure(rows: MaskRows, head_weight, embed_weight, head: SamplerHead | None, candidates: int,
            width: int, groups: tuple[str, ...]) -> list[dict]:
    """Rows of a report: per group and drafter (plain masks, head), accuracy per offset and the mean tokens a
    chain of `width` accepts per step (the bonus token not counted)."""
    plain, refined = predictions(rows, head_weight, embed_weight, head, candidates)
    report = []
    for name, guess in ((("masks", plain), ("masks + sampler head", refined)) if head is not None
                        else (("masks", plain),)):
        for group, table in block_table(rows, guess == rows.target, width, groups).items():
            reach = table.long().cumprod(dim=1).float().mean(dim=0)  # [width]: the chain's first j slots all right
            report.append(dict(group=group, drafter=name, blocks=table.shape[0],
                               **{f"offset {j}": round(table[:, j - 1].float().mean().item(), 3)
                                  for j in range(1, width + 1)},
                               **{f"reach {j}": round(reach[j - 1].item(), 3) for j in range(1, width + 1)},
                               accepted=round(reach.sum().item(), 3)))
    return report


