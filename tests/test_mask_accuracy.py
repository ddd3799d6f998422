"""The held-out mask accuracy (`space.bench.mask_accuracy`): offsets, alignment and groups, against a stub model
whose offset-1 masks are always right and whose later offsets are always wrong; and the script end to end."""

from types import SimpleNamespace

import torch

from space.bench.mask_accuracy import parse_mask_accuracy_args, prompt_group, score_answers
from space.testing import tiny_llama, tiny_text_tokenizer
from space.training.samples import MaskingConfig

MASK_ID, K = 320, 3


class OffsetOneOracle:
    """Mask rows predict the real token after their position (right for offset 1 only): `x_{q+1}` at position q."""

    config = tiny_llama().config  # full attention: what the masks are built for

    def __call__(self, input_ids, position_ids, attention_mask):
        ids, positions = input_ids[0], position_ids[0]
        real = ids[ids < MASK_ID]  # the real tokens come first, at positions 0..n-1
        logits = torch.zeros(1, ids.numel(), MASK_ID + K + 1)
        for row, (token, position) in enumerate(zip(ids.tolist(), positions.tolist())):
            if token == MASK_ID:  # the first slot of a block: M_1, which learns x_{p+1}
                logits[0, row, int(real[min(position + 1, real.numel() - 1)])] = 1.0
            elif token > MASK_ID:  # M_2 ..: a token that is never a target
                logits[0, row, 0] = 1.0
        return SimpleNamespace(logits=logits)


def records():
    answer = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    return [dict(id="stdlib/json.dumps", instruction="Write json.dumps.", output=answer),
            dict(id="explain/0/1", instruction="Explain tides.", output=answer + " fifteen sixteen"),
            dict(id="two_turn/explain/0/1/2", instruction="Shorter?", output=answer,
                 history=[["Explain tides.", "Tides come from the moon."]])]


def test_offsets_are_scored_against_the_right_targets_per_group():
    masking = MaskingConfig(mask_num=K, mask_id=MASK_ID, mask_diff=True, efficient=True, mask_blocks=4, cutoff_len=256)
    correct, count = score_answers(OffsetOneOracle(), tiny_text_tokenizer(), records(), masking)
    for group in ("code", "general"):
        assert count[group][0] > 0 and correct[group][0] == count[group][0]  # offset 1: every prediction right
        assert correct[group][1:] == [0, 0] and all(n > 0 for n in count[group][1:])
    assert sum(count["general"]) > sum(count["code"])  # two general answers, one code answer
    assert [prompt_group(r["id"]) for r in records()] == ["code", "general", "general"]


def test_flags_and_missing_data_get_one_line(tmp_path):
    import pytest

    from space.bench.mask_accuracy import mask_accuracy
    from space.errors import SpaceError

    with pytest.raises(SpaceError, match="--data .*held_out.jsonl not found; the default-model recipe writes"):
        mask_accuracy(parse_mask_accuracy_args(["--data", str(tmp_path / "held_out.jsonl")]))
    with pytest.raises(SpaceError, match="unknown flag"):
        parse_mask_accuracy_args(["--data", "x.jsonl", "--blokcs", "3"])
