"""The shipped default model's recipe: self-distillation data, LoRA SAR-SFT, export. One call, resumable.

Steps (each skipped or resumed when its output exists):
1. `make_distill_data`: the base model's greedy answers to the project's prompts;
2. `train` with `configs/default_model/sft.yaml`: LoRA SAR-SFT in multi-block mode, resumed from the
   newest checkpoint if one exists;
3. `export_adapter`: float16 adapter + SPACE fields into `space/default_model/`.

Each step is given the flags of its script, and `recipe_log.json` in the work dir records them with the
step's wall time, so `python scripts/<step>.py <command>` repeats a step exactly.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from space.models import SHIPPED_MODEL_DIR
from space.training.arguments import parse_flags
from space.training.distill import make_distill_data, parse_distill_args
from space.training.export import export_adapter, parse_export_args
from space.training.recipe import train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default_model" / "sft.yaml"
DECODE_MASK_NUM = 3  # chosen by the k sweeps on the shipped model (docs/benchmarks.md): this CPU
DECODE_MASK_NUM_CUDA = 6  # and an H100, where a wider step costs about what a narrow one does


@dataclass
class DefaultModelArguments:
    """The flags of `scripts/make_default_model.py`."""

    model: str | None = field(default=None, metadata={"help": "base model (default: the embedded SmolLM2-135M-Instruct)"})
    work_dir: str = "runs/default_model"
    export_dir: str = str(SHIPPED_MODEL_DIR)
    config: str = str(CONFIG)
    limit: int | None = field(default=None, metadata={"help": "prompts for the self-distillation data"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length of the self-distillation data"})
    batch_size: int = field(default=16, metadata={"help": "generation batch size"})
    max_steps: int | None = field(default=None, metadata={"help": "override the config's training steps"})
    decode_mask_num: int = field(default=DECODE_MASK_NUM, metadata={
        "help": "default decoding k recorded with the export (chosen by the k sweep in docs/benchmarks.md)"})
    decode_mask_num_cuda: int = field(default=DECODE_MASK_NUM_CUDA, metadata={
        "help": "default decoding k on a GPU recorded with the export"})
    train_args: str = field(default="", metadata={"help": "extra train_sft.py flags, space separated"})


def parse_default_model_args(argv: list[str] | None = None) -> DefaultModelArguments:
    (args,) = parse_flags((DefaultModelArguments,), argv, "make_default_model.py",
                          description="Remake the shipped default model: self-distillation data, LoRA SAR-SFT, export.")
    return args


def make_default_model(args: DefaultModelArguments) -> Path:
    """Run (or resume) the three steps in `args.work_dir`; returns the export folder."""
    from transformers.trainer_utils import get_last_checkpoint

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "recipe_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}

    def step(name, function, command):
        print(f"[recipe] {name}: {' '.join(command)}", file=sys.stderr)
        start = time.perf_counter()
        result = function(command)
        log[name] = dict(command=command, seconds=round(time.perf_counter() - start, 1) + log.get(name, {}).get("seconds", 0))
        log_path.write_text(json.dumps(log, indent=2))
        return result

    data = work / "distill.jsonl"
    distill = ["--output", str(data), "--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.batch_size)]
    distill += (["--model", args.model] if args.model else []) + (["--limit", str(args.limit)] if args.limit else [])
    step("distill", lambda flags: make_distill_data(parse_distill_args(flags)), distill)

    output = work / "sft"
    training = [args.config, "--dataset", str(data), "--output_dir", str(output)]
    training += ["--model_name_or_path", args.model] if args.model else []
    training += ["--max_steps", str(args.max_steps)] if args.max_steps else []
    if output.is_dir() and get_last_checkpoint(str(output)):
        training += ["--resume_from_checkpoint", "last"]
    training += args.train_args.split()
    step("train", train, training)

    export = ["--adapter_dir", str(output), "--output", args.export_dir, "--mask_num", str(args.decode_mask_num),
              "--cuda_mask_num", str(args.decode_mask_num_cuda)]
    exported = step("export", lambda flags: export_adapter(parse_export_args(flags)), export)
    print(exported)
    total = sum(entry["seconds"] for key, entry in log.items() if key in ("distill", "train"))
    print(f"[recipe] data + training took {total / 60:.1f} min; model exported to {exported.path}", file=sys.stderr)
    return exported.path
