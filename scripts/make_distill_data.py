"""Build the self-distillation SFT data: project-built prompts answered by the base model (greedy).

    python scripts/make_distill_data.py --output runs/default_model/distill.jsonl

Writes alpaca-format JSONL records (`instruction`, `input`, `output`, plus `id` and the generated
`output_ids`) for `scripts/train_sft.py --template chat_template`. Resumable: rerun to continue.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run  # noqa: E402
from space.training.distill import build_prompts, generate_answers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="base model (default: the embedded SmolLM2-135M-Instruct base)")
    parser.add_argument("--output", default="runs/default_model/distill.jsonl")
    parser.add_argument("--instructions", default=str(ROOT / "configs/distill/instructions.json"),
                        help="comma list of JSON files with project-written instructions")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (after shuffling)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", default="true")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    files = [Path(p) for p in args.instructions.split(",") if p]
    for path in files:
        if not path.is_file():
            raise space.SpaceError(f"instructions file not found: {path}")
    prompts, dropped = build_prompts(files, seed=args.seed, limit=args.limit)
    print(f"[distill] {len(prompts)} prompts ({dropped} dropped as overlapping HumanEval)", file=sys.stderr)
    model, tokenizer = space.load_model(args.model)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = generate_answers(model, tokenizer, prompts, output, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, progress=args.progress == "true")
    tokens = sum(len(r["output_ids"]) for r in records)
    print(f"[distill] {len(records)} answers, {tokens} tokens, {time.perf_counter() - start:.0f} s -> {output}",
          file=sys.stderr)
    return records


if __name__ == "__main__":
    run(main)
