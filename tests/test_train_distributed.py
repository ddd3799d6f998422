"""Training on several ranks: per-offset mask metrics summed over ranks, and the real 2-rank DeepSpeed
launcher on CPU with ZeRO-3 (mask tokens added to partitioned weights) and with an existing mask token."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

import space
from space.testing import tiny_llama, tiny_text_tokenizer
from space.training import parse_train_args
from space.training.collate import SarCollator
from space.training.loss import MaskMetrics, sar_loss
from space.training.recipe import build_dataset, masking_config
from space.training.trainer import MaskMetricsLogger, MetricsAccumulator, means_from_sums
from space.window import additive_mask
from tests.test_train import make_dataset, with_added_mask

ROOT = Path(__file__).resolve().parents[1]


def rank_metrics(rank: int, k: int = 3) -> MaskMetrics:
    """Rank-specific sums: rank 1 sees twice as many predictions as rank 0, and gets them right less often."""
    count = torch.tensor([4.0, 3.0, 0.0]) * (rank + 1)
    return MaskMetrics(loss_sum=count * (1.0 + rank), correct=count / (rank + 2), count=count)


def test_means_over_a_fake_world_are_those_of_all_predictions_together():
    ranks = [MetricsAccumulator(3) for _ in range(2)]
    for rank, accumulator in enumerate(ranks):
        accumulator.add(rank_metrics(rank))
        accumulator.add(rank_metrics(rank))  # two steps per log line
    world_sum = sum(accumulator.pop_sums() for accumulator in ranks)  # what all_reduce(SUM) gives every rank
    one_rank = MetricsAccumulator(3)
    for rank in (0, 1, 0, 1):
        one_rank.add(rank_metrics(rank))
    assert means_from_sums(world_sum) == one_rank.pop_means() == {
        "mask_loss_1": round((16 * 1 + 32 * 2) / 48, 4), "mask_acc_1": round((8 + 32 / 3) / 48, 4),
        "mask_loss_2": round((12 * 1 + 24 * 2) / 36, 4), "mask_acc_2": round((6 + 8) / 36, 4),
    }  # offset 3 was never seen: no entry
    local = MetricsAccumulator(3)
    local.add(rank_metrics(0))
    assert local.pop_means()["mask_loss_1"] == 1.0 != means_from_sums(world_sum)["mask_loss_1"]
    assert MetricsAccumulator(3).pop_sums().tolist() == [[0.0] * 3] * 3  # nothing added: zeros join the sum


def test_logger_sums_over_ranks_once_per_log_line(monkeypatch):
    other_rank = MetricsAccumulator(3)
    other_rank.add(rank_metrics(1))
    other = other_rank.pop_sums()
    calls = []

    def all_reduce(tensor, op):  # a fake two-rank world: the other rank contributes `other`
        assert op == dist.ReduceOp.SUM
        calls.append(tuple(tensor.shape))
        tensor += other

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    accumulator = MetricsAccumulator(3)
    accumulator.add(rank_metrics(0))
    accumulator.add(rank_metrics(0))
    logs, history = {"loss": 1.0}, [{"loss": 1.0}]
    MaskMetricsLogger(accumulator).on_log(SimpleNamespace(device=torch.device("cpu")),
                                          SimpleNamespace(log_history=history), None, logs=logs)
    assert calls == [(3, 3)]  # one collective for two steps, loss sums, hits and counts together
    expected = MetricsAccumulator(3)
    for rank in (0, 0, 1):
        expected.add(rank_metrics(rank))
    assert logs == history[0] == {"loss": 1.0, **means_from_sums(expected.pop_sums())}
    assert logs["mask_loss_1"] != 1.0  # rank 0 alone would log 1.0


# --- the real launcher -----------------------------------------------------------------------


def make_base(path: Path, rows: int = 320) -> Path:
    """A plain base (no mask fields) whose embeddings have `rows` rows, past its 320-token tokenizer when > 320."""
    tokenizer = tiny_text_tokenizer()
    model = tiny_llama(seed=0, vocab_size=rows, init_std=0.02)
    for name in ("mask_id", "mask_num", "mask_diff"):
        delattr(model.config, name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def launch(base: Path, data: Path, output: Path, *extra) -> tuple[dict, list[str]]:
    """`deepspeed --num_gpus 2 scripts/train_sft.py` on CPU (DeepSpeed's CPU accelerator, gloo); the trainer state and
    flags."""
    argv = ["--stage", "sft", "--do_train", "--model_name_or_path", str(base), "--dataset", str(data),
            "--output_dir", str(output), "--overwrite_output_dir", "--per_device_train_batch_size", "4",
            "--save_strategy", "no", "--mask_num", "3", "--mask_prob", "1.0", "--cutoff_len", "128",
            "--mask_efficient_train", "true", "--use_cpu", "true", "--report_to", "none", "--seed", "0",
            "--deepspeed", str(ROOT / "configs/deepspeed/zero3.json"), *extra]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    port = str(29300 + os.getpid() % 200)
    completed = subprocess.run(["deepspeed", "--num_gpus", "2", "--master_port", port, "scripts/train_sft.py", *argv],
                               env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads((output / "trainer_state.json").read_text()), argv


def global_mask_metrics(output: Path, argv: list[str]) -> dict[str, float]:
    """The mask metrics of the saved model over every sample of the run's dataset, on one process."""
    model, tokenizer = space.load_model(output)
    _, data_args, _, _ = parse_train_args(argv)
    samples = build_dataset(tokenizer, data_args, masking_config(data_args, space.read_mask_spec(model.config)), seed=0)
    accumulator = MetricsAccumulator(3)
    collate = SarCollator(pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        for start in range(0, len(samples), 4):
            batch = collate(samples[start:start + 4])
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                           attention_mask=additive_mask(batch["attention_mask_4d"], torch.float32)).logits
            accumulator.add(sar_loss(logits, batch["labels"], batch["mask_offsets"], 1.0, 3)[1])
    return accumulator.pop_means()


@pytest.mark.slow
@pytest.mark.parametrize("rows", [320, 324])
def test_zero3_two_ranks_add_mean_initialised_mask_rows_and_log_global_metrics(tmp_path, rows):
    # rows 320: the resize creates row 320; rows 324: row 320 exists (padding) and is written through the gather
    base, data = make_base(tmp_path / "base", rows), make_dataset(tmp_path / "data.json")
    # learning rate 0 and one epoch (32 samples = 4 steps x 2 ranks x 4) in one log line: the saved weights are
    # the initial ones, and the logged metrics must be those of every sample, not of one rank's half
    state, argv = launch(base, data, tmp_path / "out", "--learning_rate", "0", "--max_steps", "4",
                         "--logging_steps", "4")
    model, tokenizer = space.load_model(tmp_path / "out")
    plain, _ = space.load_model(base)
    assert space.read_mask_spec(model.config) == space.MaskSpec(320, 3, False)
    assert tokenizer.convert_tokens_to_ids("<space_mask_0>") == 320
    for name in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(plain, name)().weight, getattr(model, name)().weight
        assert after.shape[0] == max(rows, 321)  # never shrunk to the tokenizer
        assert torch.allclose(after[320], before[:320].mean(0), atol=1e-6)  # not zeros, not a random init
        assert torch.equal(after[:320], before[:320]) and torch.equal(after[321:], before[321:])
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 1
    expected = global_mask_metrics(tmp_path / "out", argv)
    assert {key for key in logged[0] if key.startswith("mask_")} == set(expected)
    for key, value in expected.items():
        assert logged[0][key] == pytest.approx(value, abs=3e-4), key
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()


@pytest.mark.slow
def test_zero3_two_ranks_train_with_an_existing_mask_token(tmp_path):
    base, data = with_added_mask(tmp_path / "base"), make_dataset(tmp_path / "data.json")
    state, _ = launch(base, data, tmp_path / "out", "--mask_id", "320", "--learning_rate", "3e-3", "--max_steps", "8",
                      "--logging_steps", "2")
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mask_id"] == 320
    model, tokenizer = space.load_model(tmp_path / "out")
    assert len(tokenizer) == 321 and model.get_input_embeddings().weight.shape[0] == 321  # nothing duplicated
    assert tokenizer.convert_ids_to_tokens(320) == "<mask>"
    assert tokenizer.convert_tokens_to_ids("<space_mask_0>") == tokenizer.unk_token_id
    row = model.get_input_embeddings().weight[320]
    assert (row - 0.5).abs().max() < 8 * 3e-3 * 4  # trained from the row it had (Adam moves <= ~lr per step)
    assert not torch.allclose(row, torch.full_like(row, 0.5), atol=1e-4)
    prompt = torch.tensor([[1, 50, 60, 70]])
    assert space.decode(model, prompt, "space", max_new_tokens=12).tokens.tolist() == \
        space.decode(model, prompt, "ar", max_new_tokens=12).tokens.tolist()
