"""SAR-SFT sample construction (docs/spec/SPACE.md §1.4, §1.5), the collator's attention pattern, and the loss."""

import pytest
import torch
import torch.nn.functional as F

import space
from space.testing import tiny_llama
from space.training.collate import SarCollator, block_attention
from space.training.loss import sar_loss
from space.training.samples import IGNORE, MaskingConfig, build_sample, truncate_turns

M = 90  # mask id in these examples


class ScriptedRandom:
    """Stands in for random.Random: fixed uniform draws, randint answers and sampled cut points."""

    def __init__(self, uniforms=(0.0,), randints=(), samples=None):
        self.uniforms, self.randints, self.samples = list(uniforms), list(randints), samples

    def random(self):
        return self.uniforms.pop(0) if len(self.uniforms) > 1 else self.uniforms[0]

    def randint(self, low, high):
        value = self.randints.pop(0)
        assert low <= value <= high
        return value

    def sample(self, population, count):
        chosen = self.samples[:count]
        assert set(chosen) <= set(population), (chosen, population)
        return chosen


SRC = [1, 11, 12]  # source ids (bos, ...)
Y = [20, 21, 22, 23, 24, 25, 2]  # y0..y6, y6 = </s>


def test_truncating_mode_k2_example_of_spec_1_4():
    config = MaskingConfig(mask_num=2, mask_id=M, mask_prob=0.5, cutoff_len=64)
    sample = build_sample([(SRC, Y), ([30, 31], [40, 41, 42])], config, ScriptedRandom(randints=[3]))
    assert sample["input_ids"] == SRC + [20, 21, 22] + [M, M, M]
    assert sample["labels"] == [IGNORE] * 3 + [20, 21, 22, 23, 24, 25]
    assert sample["mask_offsets"] == [0] * 6 + [1, 2, 3]  # later turns are dropped


def test_truncating_mode_skips_short_or_unlucky_turns_and_uses_mask_diff():
    config = MaskingConfig(mask_num=2, mask_id=M, mask_prob=0.5, mask_diff=True, cutoff_len=64)
    # turn 1: response too short for k+1; turn 2: draw 0.9 > mask_prob; turn 3 is masked at s=0
    pairs = [([1], [5, 2]), ([3], [6, 7, 2]), ([4], [8, 9, 10, 2])]
    sample = build_sample(pairs, config, ScriptedRandom(uniforms=[0.1, 0.9, 0.2], randints=[0]))
    assert sample["input_ids"] == [1, 5, 2, 3, 6, 7, 2, 4, M, M + 1, M + 2]
    assert sample["labels"] == [IGNORE, 5, 2, IGNORE, 6, 7, 2, IGNORE, 8, 9, 10]


def test_plain_sft_when_mask_num_is_zero():
    sample = build_sample([(SRC, Y)], MaskingConfig(mask_num=0, cutoff_len=64), ScriptedRandom())
    assert sample["input_ids"] == SRC + Y and sample["labels"] == [IGNORE] * 3 + Y


def test_proportional_turn_truncation():
    assert truncate_turns([(list(range(30)), list(range(10)))], cutoff_len=20) == [(list(range(15)), list(range(5)))]


def test_efficient_mode_hand_written_example():
    config = MaskingConfig(mask_num=2, mask_id=M, efficient=True, mask_blocks=2, cutoff_len=64)
    # real tokens: 1 11 12 | 20 21 22 23 24 25 2 at indices 0..9; responses start at index 3.
    sample = build_sample([(SRC, Y)], config, ScriptedRandom(samples=[6, 3]))
    assert sample["input_ids"] == SRC + Y + [M, M, M] + [M, M, M]
    assert sample["labels"] == [IGNORE] * 3 + Y + [IGNORE, 21, 22] + [IGNORE, 24, 25]
    assert sample["position_ids"] == list(range(10)) + [3, 4, 5] + [6, 7, 8]
    assert sample["segment_ids"] == [0] * 10 + [1, 1, 1] + [2, 2, 2]
    assert sample["mask_offsets"] == [0] * 10 + [1, 2, 3] * 2


def test_efficient_mode_cut_points_keep_every_target_in_one_response():
    config = MaskingConfig(mask_num=2, mask_id=M, efficient=True, mask_blocks=50, cutoff_len=400)
    pairs = [([1, 2], [3, 4, 5, 6]), ([7], [8, 9, 10])]  # real: 1 2 3 4 5 6 7 8 9 10
    import random

    sample = build_sample(pairs, config, random.Random(0))
    starts = [p for p, s, o in zip(sample["position_ids"], sample["segment_ids"], sample["mask_offsets"])
              if s and o == 1]
    assert sorted(starts) == [2, 3, 7]  # x_p .. x_{p+2} all inside one response


def test_cutoff_too_short_for_the_masks():
    with pytest.raises(space.SpaceError, match="cutoff_len 6 is too short"):
        MaskingConfig(mask_num=5, cutoff_len=6).validate()
    with pytest.raises(space.SpaceError, match="too short"):
        MaskingConfig(mask_num=3, efficient=True, mask_blocks=4, cutoff_len=16).validate()


def test_block_attention_pattern():
    positions = torch.tensor([[0, 1, 2, 3, 1, 2, 0]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, -1]])  # 4 real, a block at position 1, one pad
    allowed = block_attention(positions, segments)[0, 0]
    assert allowed[3].tolist() == [True] * 4 + [False] * 3  # real tokens never see blocks
    assert allowed[4].tolist() == [True, False, False, False, True, False, False]  # block sees x_<1 and itself
    assert allowed[5].tolist() == [True, False, False, False, True, True, False]
    assert allowed[6].tolist() == [False] * 6 + [True]  # padding sees only itself


def model_logits(model, batch):
    inputs = dict(input_ids=batch["input_ids"])
    if "attention_mask_4d" in batch:
        pattern = batch["attention_mask_4d"]
        inputs["attention_mask"] = torch.zeros(pattern.shape).masked_fill(~pattern, torch.finfo(torch.float32).min)
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    with torch.no_grad():
        return model(**inputs).logits[0]


@pytest.mark.parametrize("cut", [0, 2, 4])
def test_efficient_block_logits_equal_truncating_block_logits(cut):
    model = tiny_llama(seed=6, mask_num=2)
    mask_id = model.config.mask_id
    collate = SarCollator(pad_token_id=0)
    truncating = build_sample([(SRC, Y)], MaskingConfig(mask_num=2, mask_id=mask_id, cutoff_len=64),
                              ScriptedRandom(randints=[cut]))
    efficient = build_sample([(SRC, Y)], MaskingConfig(mask_num=2, mask_id=mask_id, efficient=True, mask_blocks=2,
                                                       cutoff_len=64), ScriptedRandom(samples=[3 + cut, 3 + 3]))
    a = model_logits(model, collate([truncating]))[-3:]
    blocks = model_logits(model, collate([efficient]))
    first_block = blocks[10:13] if 3 + cut < 6 else blocks[13:16]
    assert torch.allclose(first_block, a, atol=1e-5)
    # the real tokens' logits are those of the plain sequence: blocks are invisible to them
    plain = model_logits(model, collate([dict(input_ids=SRC + Y, labels=SRC + Y, mask_offsets=[0] * 10)]))
    assert torch.allclose(blocks[:10], plain, atol=1e-5)


def test_loss_against_hand_computation_with_fractional_weight():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[IGNORE, 3, 4, IGNORE, 6]])
    offsets = torch.tensor([[0, 0, 1, 2, 0]])  # inputs at positions 2, 3 are masks
    loss, metrics = sar_loss(logits, labels, offsets, mask_loss_weight=0.5, mask_num=2)
    ce = lambda i, t: F.cross_entropy(logits[0, i][None], torch.tensor([t]))  # noqa: E731
    # logit i predicts labels[i+1]; labelled: i=0 -> 3, i=1 -> 4, i=3 -> 6 (input at 3 is mask offset 2)
    expected = (ce(0, 3) + ce(1, 4) + 0.5 * ce(3, 6)) / 3
    assert torch.allclose(loss, expected, atol=1e-6)
    assert metrics.count.tolist() == [0.0, 1.0]  # offset 1 (i=2) predicts -100; offset 2 predicts 6
    assert torch.allclose(metrics.loss_sum[1], ce(3, 6))
    full, _ = sar_loss(logits, labels, offsets, mask_loss_weight=1.0, mask_num=2)
    assert not torch.allclose(full, loss)
