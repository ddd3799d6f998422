"""Batch SAR-SFT samples: right padding, and the 4D attention pattern of multi-block samples.

Plain and truncating samples are ordinary causal sequences: a 2D padding mask is enough (and keeps
fused attention kernels usable). Efficient samples carry private mask blocks; for them the collator
builds a boolean `[B, 1, L, L]` pattern (True = may attend), which the trainer turns into an additive
mask of the model's dtype:

* a real token sees the real tokens up to itself (causal), never a block;
* a token of block b sees the real tokens at positions before the block's first position, and the
  tokens of block b up to itself;
* a padding row sees only itself (a fully blocked row would give NaN in softmax); its labels are -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from space.training.samples import IGNORE


@dataclass
class SarCollator:
    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
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
