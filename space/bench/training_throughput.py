"""Training throughput of SAR-SFT (truncating and multi-block modes, LoRA and gated LoRA) against plain SFT.

Owns the measurement behind `scripts/bench_train.py`: its flags (`ThroughputArgs`), the modes compared
(`MODES`), the step timer, the JSON report it writes and its markdown table. The training itself is
`space.training.train` (the recipe of `scripts/train_sft.py`), run in-process for a few optimizer
steps per mode on the same records (batch 1, same seed). Reported per mode: seconds per sample, real
tokens per second, mask predictions per sample, and the cost relative to plain SFT.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import space
from space.cli import parse_flags, require_counts
from space.errors import SpaceError
from space.io import markdown_table, provenance, write_atomic
from space.training import train

MODES = {
    "plain SFT": ["--mask_num", "0"],
    "SAR truncating (k=5, p=1)": ["--mask_num", "5", "--mask_prob", "1.0"],
    "SAR multi-block (k=5, 4 blocks)": ["--mask_num", "5", "--mask_prob", "1.0", "--mask_efficient_train", "true",
                                        "--mask_blocks", "4"],
    "SAR multi-block (k=5, 8 blocks)": ["--mask_num", "5", "--mask_prob", "1.0", "--mask_efficient_train", "true",
                                        "--mask_blocks", "8"],
}
# the shipped model's recipe (space/configs/default_model/sft.yaml) as LoRA and as a gated adapter
_RECIPE_BLOCKS = ["--mask_num", "6", "--mask_diff", "true", "--mask_random", "true", "--mask_prob", "1.0",
                  "--mask_efficient_train", "true", "--mask_blocks", "64", "--lora_rank", "32", "--lora_alpha", "64"]
MODES["LoRA multi-block (k=6, 64 blocks)"] = ["--finetuning_type", "lora", *_RECIPE_BLOCKS]
MODES["gated LoRA multi-block (k=6, 64 blocks)"] = ["--finetuning_type", "gated_lora", *_RECIPE_BLOCKS]
COLUMNS = ["mode", "seconds_per_sample", "cost_vs_plain", "real_tokens_per_sample", "fed_tokens_per_sample",
           "real_tokens_per_second", "mask_predictions_per_sample"]


@dataclass
class ThroughputArgs:
    """The measurement's settings (the flags of `scripts/bench_train.py`)."""

    dataset: str = field(metadata={"help": "a .json/.jsonl SFT file or registry name"})
    model: str | None = field(default=None, metadata={
        "help": "HF dir, hub name or .gguf (default: embedded SmolLM2-135M)"})
    dataset_dir: str = "data"
    steps: int = field(default=12, metadata={"help": "timed optimizer steps per mode (batch 1)"})
    cutoff_len: int = 512
    modes: str = field(default="all", metadata={"help": "semicolon list of mode names (see MODES), or all"})
    train_args: str = field(default="", metadata={"help": "extra train_sft.py flags for every mode, space separated"})
    output: str = "outputs/bench_train.json"


def parse_throughput_args(argv: list[str] | None = None, description: str | None = None) -> ThroughputArgs:
    """`argv` (default: the command line) -> `ThroughputArgs`; a bad or missing flag is one `SpaceError` line."""
    (args,) = parse_flags((ThroughputArgs,), argv, "bench_train.py", description, show_defaults=False)
    require_counts(args, ("steps", "cutoff_len"))  # before the base model is converted
    chosen_modes(args)
    return args


def chosen_modes(args: ThroughputArgs) -> list[str]:
    """The `MODES` `--modes` names; one line for a name that is not one."""
    chosen = list(MODES) if args.modes == "all" else [name.strip() for name in args.modes.split(";") if name.strip()]
    unknown = [name for name in chosen if name not in MODES]
    if unknown or not chosen:
        raise SpaceError(f"--modes: unknown or empty ({args.modes!r}); modes are {list(MODES)} or all")
    return chosen


def measure_training_throughput(args: ThroughputArgs, command: str) -> dict:
    """Train a few steps in each of `MODES`; writes the report (`command` names how it was made) to `args.output`."""
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None or str(model_dir).endswith(".gguf"):  # convert once, not once per mode
            model, tokenizer = space.load_model(model_dir)
            model_dir = str(Path(scratch) / "base")
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            del model
        rows = []
        for name in chosen_modes(args):
            flags = MODES[name]
            k = int(flags[flags.index("--mask_num") + 1])
            common = ["--stage", "sft", "--do_train", "--model_name_or_path", model_dir, "--dataset", args.dataset,
                      "--dataset_dir", args.dataset_dir, "--output_dir", str(Path(scratch) / "out"),
                      "--overwrite_output_dir", "--per_device_train_batch_size", "1",
                      "--max_steps", str(args.steps + 1), "--max_samples", str(args.steps + 1),
                      "--learning_rate", "1e-5", "--save_strategy", "no",
                      "--logging_steps", "1000", "--cutoff_len", str(args.cutoff_len), "--use_cpu", "true",
                      "--report_to", "none", "--seed", "42", "--dataloader_drop_last", "false"]
            timer = StepTimer()
            trainer = train(common + flags + args.train_args.split(), callbacks=[timer])
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
                    sum(1 for j in s["mask_offsets"] if 0 < j <= k) for s in samples),
            ))
    plain = rows[0]["seconds_per_sample"]  # the first mode chosen (plain SFT in the full run)
    for row in rows:
        row["cost_vs_plain"] = row["seconds_per_sample"] / plain
    rows = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    written = dict(command=command, provenance=provenance(), cutoff_len=args.cutoff_len, steps=args.steps,
                   train_args=args.train_args, rows=rows)
    write_atomic(args.output, json.dumps(written, indent=2))
    return written


def throughput_table(rows: list[dict]) -> str:
    """The report's rows as a markdown table (as quoted in docs/benchmarks.md)."""
    return markdown_table(rows, COLUMNS)


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
