"""Remake the shipped default model: self-distillation data, LoRA SAR-SFT, export. One command, resumable.

    python scripts/make_default_model.py                      # the recipe (about 90 min on 2 CPU cores)
    python scripts/make_default_model.py --model tiny_dir --limit 8 --max_new_tokens 16 --max_steps 4 \\
        --work_dir /tmp/run --export_dir /tmp/export              # the same steps on a tiny model

Steps (each skipped or resumed when its output exists):
1. `scripts/make_distill_data.py`: the base model's greedy answers to the project's prompts;
2. `scripts/train_sft.py configs/default_model/sft.yaml`: LoRA SAR-SFT in multi-block mode,
   resumed from the newest checkpoint if one exists;
3. `scripts/export_default_model.py`: float16 adapter + SPACE fields into `space/default_model/`.
A `recipe_log.json` in the work dir records each step's wall time and the exact commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_default_model  # noqa: E402
import make_distill_data  # noqa: E402
import train_sft  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from space.cli import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DECODE_MASK_NUM = 3  # chosen by the k sweeps on the shipped model (docs/benchmarks.md): this CPU
DECODE_MASK_NUM_CUDA = 6  # and an H100, where a wider step costs about what a narrow one does


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--work_dir", default="runs/default_model")
    parser.add_argument("--export_dir", default=str(ROOT / "space" / "default_model"))
    parser.add_argument("--config", default=str(ROOT / "configs" / "default_model" / "sft.yaml"))
    parser.add_argument("--limit", type=int, default=None, help="prompts for the self-distillation data")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="answer length of the self-distillation data")
    parser.add_argument("--batch_size", type=int, default=16, help="generation batch size")
    parser.add_argument("--max_steps", type=int, default=None, help="override the config's training steps")
    parser.add_argument("--decode_mask_num", type=int, default=DECODE_MASK_NUM,
                        help="default decoding k recorded with the export (chosen by the k sweep in docs/benchmarks.md)")
    parser.add_argument("--decode_mask_num_cuda", type=int, default=DECODE_MASK_NUM_CUDA,
                        help="default decoding k on a GPU recorded with the export")
    parser.add_argument("--train_args", default="", help="extra train_sft.py flags, space separated")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
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
    step("distill", make_distill_data.main, distill)

    output = work / "sft"
    train = [args.config, "--dataset", str(data), "--output_dir", str(output)]
    train += ["--model_name_or_path", args.model] if args.model else []
    train += ["--max_steps", str(args.max_steps)] if args.max_steps else []
    if output.is_dir() and get_last_checkpoint(str(output)):
        train += ["--resume_from_checkpoint", "last"]
    train += args.train_args.split()
    step("train", train_sft.main, train)

    export = ["--adapter_dir", str(output), "--output", args.export_dir, "--mask_num", str(args.decode_mask_num),
              "--cuda_mask_num", str(args.decode_mask_num_cuda)]
    exported = step("export", export_default_model.main, export)
    total = sum(entry["seconds"] for key, entry in log.items() if key in ("distill", "train"))
    print(f"[recipe] data + training took {total / 60:.1f} min; model exported to {exported}", file=sys.stderr)
    return exported


if __name__ == "__main__":
    run(main)
