"""Evaluate decoding methods on the same prompts: speedup, tokens per step, identity and quality.

Takes the original SPACE eval flags with their meanings (`--llm_dir --mask_id --dataset --mask_num
--do_sample --use_cache --model_type --mask_diff --save_data`, booleans as `true/false`) plus the
toolkit's own (`--help` lists them; `space.eval.flags` defines them). Every method answers every
prompt in the same process and model; `space.eval.pipeline` runs the evaluation and says what it
writes to `--output_dir` (samples.jsonl, summary.json/.md/.png, with `--save_data true` the original
CSVs). Interrupted runs keep finished prompts; the same command resumes.

    python scripts/eval_infer.py --dataset human_eval --methods space,ar,hf,prompt_lookup --num_samples 20
    torchrun --nproc_per_node 8 scripts/eval_infer.py --dataset human_eval --device cuda   # a shard per GPU
"""

from __future__ import annotations

from space.cli import run
from space.eval import evaluate, report
from space.eval.flags import parse_eval_args
from space.eval.pipeline import output_dir
from space.eval.ranks import Ranks


def main(argv=None) -> dict:
    args = parse_eval_args(argv, description=__doc__.split("\n\n")[0])
    summary = evaluate(args)
    if Ranks.from_env().main:  # every rank returns the summary; one prints it
        print(report.summary_table(summary))
        print(f"\nresults: {output_dir(args)}/summary.json, summary.md, summary.png, samples.jsonl")
    return summary


if __name__ == "__main__":
    run(main)
