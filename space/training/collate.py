"""Batch SAR-SFT samples: right padding, and the 4D attention pattern of multi-block samples.

Plain and truncating samples are ordinary causal sequences: a 2D padding mask is enough (and keeps
fused attention kernels usable). Efficient samples carry private mask blocks; for them the collator
builds a boolean `[B, 1, L, L]` pattern (True = may attend), which the trainer turns into an additive
mask of the model's dtype:

* a real token sees the real tokens up to itself (causal), never a block;
* a token of block b sees the real tokens at positions before the block's first position, and the
  tokens of block b up to itself;
* a padding row sees only itself (a fully blocked row would give NaN in softmax); its labels are -100.

With `split_prefix` (gated adapters, `space.adapters.gated`) each sample is laid out as its real tokens padded to the
batch's longest real part, then its mask blocks padded to the longest block part, and `prefix_length` says
where the blocks start: the trainer runs the real part once without gradients as a KV cache and the blocks
on top of it. The real tokens' labels are dropped (a gated model's real rows are the frozen base's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.training.samples import IGNORE


@dataclass
class SarCollator:
    pad_token_id: int
    split_prefix: bool = False  # gated adapters: real tokens first (no labels), then the mask blocks

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.split_prefix:
            return self.split(features)
        length = max(len(feature["input_ids"]) for feature in features)

        def pad(key, value):
            return torch.tensor([f[key] + [value] * (length - len(f[key])) for f in features], dtype=torch.long)

        batch = dict(input_ids=pad("input_ids", self.pad_token_id), labels=pad("labels", IGNORE),
                     mask_offsets=pad("mask_offsets", 0))
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        real = torch.arange(length)[None, :] < lengths[:, None]  # [B, L]
        if "segment_ids" not in features[0]:
            batch["attention_mask"] = real.long()
            return batch
        positions = pad("position_ids", 0)  # [B, L]
        segments = pad("segment_ids", -1)  # [B, L]; -1 marks padding
        batch["position_ids"] = positions
        batch["attention_mask_4d"] = block_attention(positions, segments)
        return batch

    def split(self, features: list[dict]) -> dict[str, torch.Tensor]:
        parts = [_real_and_blocks(feature) for feature in features]
        prefix = max(len(real["input_ids"]) for real, _ in parts)
        blocks = max(1, max(len(block["input_ids"]) for _, block in parts))  # one padding column when none has any
        fill = dict(input_ids=self.pad_token_id, labels=IGNORE, mask_offsets=0, position_ids=0, segment_ids=-1)

        def row(real: dict, block: dict, key: str) -> list[int]:
            return (real[key] + [fill[key]] * (prefix - len(real[key])) + block[key]
                    + [fill[key]] * (blocks - len(block[key])))

        batch = {key: torch.tensor([row(real, block, key) for real, block in parts], dtype=torch.long) for key in fill}
        segments = batch.pop("segment_ids")
        batch["attention_mask_4d"] = block_attention(batch["position_ids"], segments)
        batch["prefix_length"] = torch.full((len(features),), prefix, dtype=torch.long)
        return batch


def _real_and_blocks(feature: dict) -> tuple[dict, dict]:
    """A sample cut where its first mask slot starts: real tokens (labels dropped) and the blocks after them.

    Multi-block samples carry positions and segments; a truncating sample (one block at its end) gets them."""
    offsets = feature["mask_offsets"]
    cut = next((i for i, offset in enumerate(offsets) if offset > 0), len(offsets))
    positions = feature.get("position_ids") or list(range(len(offsets)))
    segments = feature.get("segment_ids") or [0] * cut + [1] * (len(offsets) - cut)
    if any(segment == 0 for segment in segments[cut:]):
        raise ValueError("split_prefix needs every real token before the first mask block")
    real = dict(input_ids=feature["input_ids"][:cut], labels=[IGNORE] * cut, mask_offsets=[0] * cut,
                position_ids=positions[:cut], segment_ids=segments[:cut])
    block = {key: values[cut:] for key, values in (("input_ids", feature["input_ids"]), ("labels", feature["labels"]),
                                                   ("mask_offsets", offsets), ("position_ids", positions),
                                                   ("segment_ids", segments))}
    return real, block


def block_attention(positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """`[B, L]` positions and segment ids (0 real, b >= 1 block b, -1 padding) -> `[B, 1, L, L]` bool."""
    batch, length = segments.shape
    index = torch.arange(length)
    causal = index[None, :, None] >= index[None, None, :]  # [1, L(query), L(key)]
    # First position of each token's block (real tokens: +inf, i.e. no limit on the prefix they see)
    block_start = torch.full((batch, length), torch.iinfo(torch.long).max)
    for row in range(batch):
        for block in segments[row].unique().tolist():
            if block > 0:
                members = segments[row] == block
                block_start[row, members] = positions[row, members].min()
    query_segment, key_segment = segments[:, :, None], segments[:, None, :]  # [B, L, 1], [B, 1, L]
    sees_real_prefix = (key_segment == 0) & (positions[:, None, :] < block_start[:, :, None]) & (query_segment >= 0)
    sees_own_block = (key_segment == query_segment) & (query_segment > 0)
    allowed = causal & (sees_real_prefix | sees_own_block)
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # padding rows see themselves
    return allowed[:, None]
