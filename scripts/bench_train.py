"""Training throughput of SAR-SFT (truncating and multi-block modes) against plain SFT on the same data.

Runs `space.training.train` (the recipe of `scripts/train_sft.py`) in-process for a few optimizer steps per mode on the same records
(batch 1, same seed) and reports seconds per sample, real tokens per second, mask predictions per
sample, and the cost of each mode relative to plain SFT. Writes JSON and prints a markdown table.

    python scripts/bench_train.py --dataset ../shared/data/lima.json --steps 12 --output docs/results/bench_train.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import space
from space.cli import run
from space.eval import report
from space.training import train

MODES = {
    "plain SFT": ["--mask_num", "0"],
    "SAR truncating (k=5, p=1)": ["--mask_num", "5", "--mask_prob", "1.0"],
    "SAR multi-block (k=5, 4 blocks)": ["--mask_num", "5", "--mask_prob", "1.0", "--mask_efficient_train", "true", "--mask_blocks", "4"],
    "SAR multi-block (k=5, 8 blocks)": ["--mask_num", "5", "--mask_prob", "1.0", "--mask_efficient_train", "true", "--mask_blocks", "8"],
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF dir, hub name or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--dataset", required=True, help="a .json/.jsonl SFT file or registry name")
    parser.add_argument("--dataset_dir", default="data")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per mode (batch 1)")
    parser.add_argument("--cutoff_len", type=int, default=512)
    parser.add_argument("--output", default="outputs/bench_train.json")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None or str(model_dir).endswith(".gguf"):  # convert once, not once per mode
            model, tokenizer = space.load_model(model_dir)
            model_dir = str(Path(scratch) / "base")
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            del model
        rows = []
        for name, flags in MODES.items():
            common = ["--stage", "sft", "--do_train", "--model_name_or_path", model_dir, "--dataset", args.dataset,
                      "--dataset_dir", args.dataset_dir, "--output_dir", str(Path(scratch) / "out"),
                      "--overwrite_output_dir", "--per_device_train_batch_size", "1", "--max_steps", str(args.steps + 1),
                      "--max_samples", str(args.steps + 1), "--learning_rate", "1e-5", "--save_strategy", "no",
                      "--logging_steps", "1000", "--cutoff_len", str(args.cutoff_len), "--use_cpu", "true",
                      "--report_to", "none", "--seed", "42", "--dataloader_drop_last", "false"]
            timer = StepTimer()
            trainer = train(common + flags, callbacks=[timer])
            samples = trainer.train_dataset  # the same first records in every mode, one per step
            per_sample = statistics.mean(timer.durations[1:])  # step 0 is the warm-up
            real_tokens = statistics.mean(sum(1 for j in s["mask_offsets"] if j == 0) for s in samples)
            rows.append(dict(
                mode=name,
                seconds_per_sample=per_sample,
                real_tokens_per_sample=real_tokens,
                fed_tokens_per_sample=statistics.mean(len(s["input_ids"]) for s in samples),
                real_tokens_per_second=real_tokens / per_sample,
                mask_predictions_per_sample=statistics.mean(
                    sum(1 for j in s["mask_offsets"] if 0 < j <= 5) for s in samples),
            ))
    plain = rows[0]["seconds_per_sample"]
    for row in rows:
        row["cost_vs_plain"] = row["seconds_per_sample"] / plain
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    report = dict(command="python scripts/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  threads=torch.get_num_threads(), torch=torch.__version__, cutoff_len=args.cutoff_len,
                  steps=args.steps, rows=rows)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows))
    return report


class StepTimer:
    """A TrainerCallback that records the wall time of each optimizer step."""

    def __init__(self):
        self.durations: list[float] = []
        self._start = None

    def __getattr__(self, name):  # every other callback event is a no-op
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_begin(self, *args, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def markdown_table(rows: list[dict]) -> str:
    return report.markdown_table(rows, ["mode", "seconds_per_sample", "cost_vs_plain", "real_tokens_per_sample",
                                        "fed_tokens_per_sample", "real_tokens_per_second", "mask_predictions_per_sample"])


if __name__ == "__main__":
    run(main)
