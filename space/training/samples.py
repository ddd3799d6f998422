"""SAR-SFT samples (docs/spec/SPACE.md §1.4-§1.5): encoded turns -> model inputs with mask blocks.

Labels are aligned with the inputs (HF convention: the logit at index i is scored against
`labels[i+1]`). A block of masks placed after the context `x_<p` holds `M_1 .. M_{k+1}` at positions
`p .. p+k` with labels `[-100, x_{p+1}, ..., x_{p+k}]` after the block's preceding label slot, so
`M_j` learns `x_{p+j}` (j = 1..k) while `x_p` is learned by the ordinary AR stream. `M_{k+1}` has no
target; it only carries the label slot of `M_k`.

Three modes:

* **truncating** (faithful default, docs/spec/SPACE.md §1.4): turns are processed in order; the first turn with
  `U(0,1) <= mask_prob` and a response of at least k+1 tokens is cut at `s ~ randint(0, len-k-1)`,
  gets one block of k+1 masks (labels `y_0 .. y_{s+k}`), and every later turn is dropped.
* **efficient** (multi-block, docs/spec/SPACE.md §1.5 with its bugs fixed): the whole conversation keeps its AR
  labels and `mask_blocks` private blocks are appended, each attending only to its own prefix at
  the right positions. The fixes: eligibility and cut points come from every turn's responses (not
  the last turn's length), all k targets must be response tokens (no -100 across turn
  boundaries), blocks are reserved inside `cutoff_len` (never cut away), `mask_random` appends
  `kk+1` masks for `kk` targets, and candidates are found in O(L).
* **sdsat** (SDSAT, docs/spec/SDSAT.md §3.2, reconstructed: the paper's recipe is unpublished): the whole
  conversation keeps its AR labels, and one span of `kk ~ U{1..k}` adaptive tokens per `sat_every`
  (64) real tokens is placed at random eligible points, in the room `cutoff_len` leaves (at least one
  span per sample, for which the tail is clipped if needed). A span after real token `x_m` holds
  `SAT_1 .. SAT_kk` at positions `m+1 .. m+kk`, sees `x_<=m` and its own earlier SATs, and `SAT_j`
  learns `x_{m+j+1}`: exactly the rows of SDSAT's draft forward `[x_m, SAT x k]`. Real tokens never
  see a span, so their predictions are those of the plain sequence. A span is stored like an
  efficient-mode block with `p = m+1` (same collator, same 4D mask): `kk+1` slots, the last one only
  carrying the label of `SAT_kk`.

Each sample carries `mask_offsets` (j for `M_j`, 0 for real tokens); efficient and sdsat samples also carry
`position_ids` and `segment_ids` (0 for real tokens, b for block b) from which the collator builds
the 4D attention mask.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from space.errors import SpaceError
from space.training.templates import EncodedTurn

IGNORE = -100


@dataclass(frozen=True)
class MaskingConfig:
    mask_num: int = 0  # k; 0 = plain SFT
    mask_id: int = 0
    mask_prob: float = 1.0
    mask_diff: bool = False
    mask_random: bool = False  # efficient mode: block size kk ~ U{1..k}
    efficient: bool = False
    mask_blocks: int = 4  # efficient mode: blocks per sample (fewer when the sample has fewer cut points)
    cutoff_len: int = 1024
    sdsat: bool = False  # SDSAT spans: mask_id is the adaptive token, mask_num the longest span (K_train)
    sat_every: int = 64  # sdsat mode: one span per this many real tokens (at least one per sample)

    def block_ids(self, size: int) -> list[int]:
        return [self.mask_id + j if self.mask_diff else self.mask_id for j in range(size)]

    def validate(self) -> None:
        if self.mask_num < 0:
            raise SpaceError(f"mask_num must be >= 0 (got {self.mask_num})")
        if self.sdsat:
            if self.mask_num < 1:
                raise SpaceError(f"sat_num must be >= 1 (got {self.mask_num}); it is the longest adaptive-token span")
            if self.sat_every < 1:
                raise SpaceError(f"sat_every must be >= 1 (got {self.sat_every})")
            if self.cutoff_len < self.mask_num + 3:
                raise SpaceError(f"cutoff_len {self.cutoff_len} is too short for one span of sat_num "
                                 f"{self.mask_num} adaptive tokens plus context; raise --cutoff_len")
            return
        if not 0.0 <= self.mask_prob <= 1.0:
            raise SpaceError(f"mask_prob must be in [0, 1] (got {self.mask_prob})")
        reserved = (self.mask_blocks if self.efficient else 1) * (self.mask_num + 1) if self.mask_num else 0
        if self.cutoff_len < reserved + 2:
            raise SpaceError(
                f"cutoff_len {self.cutoff_len} is too short for {reserved} mask slots "
                f"({'mask_blocks x ' if self.efficient else ''}(mask_num + 1)) plus context; raise --cutoff_len"
            )
        if self.efficient and self.mask_blocks < 1:
            raise SpaceError(f"mask_blocks must be >= 1 (got {self.mask_blocks})")


def truncate_turns(pairs: list[EncodedTurn], cutoff_len: int) -> list[EncodedTurn]:
    """Clip each turn's source and target in proportion (LLaMA-Factory 0.2, docs/spec/SPACE.md §1.3)."""
    clipped = []
    for source, target in pairs:
        total = len(source) + len(target)
        max_source = int(cutoff_len * len(source) / total)
        max_target = int(cutoff_len * len(target) / total)
        clipped.append((source[:max_source], target[:max_target]))
    return clipped


def build_sample(pairs: list[EncodedTurn], config: MaskingConfig, rng: random.Random) -> dict:
    """One training sample from one conversation's encoded turns."""
    if config.sdsat:
        return _sdsat_sample(pairs, config, rng)
    if config.efficient and config.mask_num > 0:
        return _efficient_sample(pairs, config, rng)
    return _truncating_sample(pairs, config, rng)


def _truncating_sample(pairs: list[EncodedTurn], config: MaskingConfig, rng: random.Random) -> dict:
    k = config.mask_num
    input_ids, labels, offsets = [], [], []
    for source, target in truncate_turns(pairs, config.cutoff_len):
        # One uniform draw per turn, as the original (static masks, seeded once).
        masked = rng.random() <= config.mask_prob and k > 0 and len(target) >= k + 1
        if masked:
            # Fix: the original clips the finished sample to cutoff_len, which can cut the block away.
            room = config.cutoff_len - len(input_ids) - len(source) - (k + 1)
            if room < 0:
                masked = False
        if masked:
            s = rng.randint(0, len(target) - k - 1)
            s = min(s, room)
            input_ids += source + target[:s] + config.block_ids(k + 1)
            labels += [IGNORE] * len(source) + target[: s + k + 1]
            offsets += [0] * (len(source) + s) + list(range(1, k + 2))
            break
        input_ids += source + target
        labels += [IGNORE] * len(source) + target
        offsets += [0] * (len(source) + len(target))
    cut = config.cutoff_len
    return dict(input_ids=input_ids[:cut], labels=labels[:cut], mask_offsets=offsets[:cut])


def _whole_conversation(pairs: list[EncodedTurn], cutoff_len: int) -> tuple[list[int], list[int]]:
    """Every turn's ids and AR labels (prompts unlabelled), turns clipped in proportion to `cutoff_len`."""
    input_ids, labels = [], []
    for source, target in truncate_turns(pairs, cutoff_len):
        input_ids += source + target
        labels += [IGNORE] * len(source) + target
    return input_ids, labels


def _unmasked_sample(input_ids: list[int], labels: list[int]) -> dict:
    """Real tokens only, at their own positions in segment 0; blocks are appended after them."""
    length = len(input_ids)
    return dict(input_ids=input_ids, labels=labels, mask_offsets=[0] * length,
                position_ids=list(range(length)), segment_ids=[0] * length)


def _efficient_sample(pairs: list[EncodedTurn], config: MaskingConfig, rng: random.Random) -> dict:
    k = config.mask_num
    input_ids, labels = _whole_conversation(pairs, config.cutoff_len)
    room = config.cutoff_len - config.mask_blocks * (k + 1)  # blocks are reserved, never clipped away
    input_ids, labels = input_ids[:room], labels[:room]
    sample = _unmasked_sample(input_ids, labels)
    if rng.random() > config.mask_prob:
        return sample
    sizes = [rng.randint(1, k) if config.mask_random else k for _ in range(config.mask_blocks)]
    _append_blocks(sample, input_ids, labels, sizes, config, rng)
    return sample


def _sdsat_sample(pairs: list[EncodedTurn], config: MaskingConfig, rng: random.Random) -> dict:
    k = config.mask_num
    input_ids, labels = _whole_conversation(pairs, config.cutoff_len)
    # Real tokens come first: spans take the room left under cutoff_len (one per sat_every real tokens),
    # and only the one span every sample gets may clip the tail.
    kept = min(len(input_ids), config.cutoff_len - (k + 1))
    spans = max(1, min(len(input_ids) // config.sat_every, (config.cutoff_len - kept) // (k + 1)))
    room = config.cutoff_len - spans * (k + 1)
    input_ids, labels = input_ids[:room], labels[:room]
    sample = _unmasked_sample(input_ids, labels)
    sizes = [rng.randint(1, k) for _ in range(spans)]
    _append_blocks(sample, input_ids, labels, sizes, config, rng)
    return sample


def _append_blocks(sample: dict, input_ids: list[int], labels: list[int], sizes: list[int],
                   config: MaskingConfig, rng: random.Random) -> None:
    """Append up to `len(sizes)` private blocks at distinct random cut points (efficient and sdsat modes)."""
    length = len(input_ids)
    # Cut p is valid for size kk when x_p .. x_{p+kk} are all response tokens: x_p is the AR stream's
    # target, x_{p+1} .. x_{p+kk} the masks' targets. run[p] = length of the labelled run starting at p.
    run = [0] * (length + 1)
    for p in range(length - 1, -1, -1):
        run[p] = run[p + 1] + 1 if labels[p] != IGNORE else 0
    candidates = [p for p in range(1, length) if run[p] >= min(sizes) + 1]
    chosen = sorted(rng.sample(candidates, min(len(candidates), len(sizes))))
    for block, p in enumerate(chosen, start=1):
        size = min(sizes[block - 1], run[p] - 1)
        sample["input_ids"] += config.block_ids(size + 1)
        sample["labels"] += [IGNORE] + input_ids[p + 1 : p + size + 1]
        sample["mask_offsets"] += list(range(1, size + 2))
        sample["position_ids"] += list(range(p, p + size + 1))
        sample["segment_ids"] += [block] * (size + 1)
