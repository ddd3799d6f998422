"""pass@1 / ROUGE-L of one model's greedy answers, decoded in lossless batches (no speed is measured).

Same datasets, prompts, sandboxed execution and run directory rules as `scripts/eval_infer.py`, but the prompts
are answered `--batch_size` at a time with `space.decode_batch` (`space.eval.quality`): each answer is exactly
the AR decoder's, several times faster on a CPU. Interrupted runs keep finished chunks; the same command resumes.

    python scripts/eval_quality.py --dataset humaneval-x-cpp --max_new_tokens 256 --output_dir runs/quality/cpp
    torchrun --nproc_per_node 8 scripts/eval_quality.py --dataset humaneval-x-cpp --device cuda   # a shard per GPU
"""

from __future__ import annotations

from space.cli import run
from space.eval.quality import evaluate_quality, parse_quality_args, quality_table
from space.eval.ranks import Ranks


def main(argv=None) -> dict:
    summary = evaluate_quality(parse_quality_args(argv, description=__doc__.split("\n\n")[0]))
    if Ranks.from_env().main:  # every rank returns the summary; one prints it
        print(quality_table(summary))
    return summary


if __name__ == "__main__":
    run(main)
