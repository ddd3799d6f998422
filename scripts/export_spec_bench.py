"""Write Spec-Bench model-answer files (one per method) from a finished `scripts/eval_infer.py` run directory.

    python scripts/export_spec_bench.py --run_dir outputs/eval/general --answer_file answers/smollm2.jsonl
    python Spec-Bench/evaluation/speed.py --file-path answers/smollm2-space.jsonl \\
        --base-path answers/smollm2-ar.jsonl --tokenizer-path <the model's tokenizer folder>

`scripts/eval_infer.py --answer_format spec-bench` writes the same files at the end of a run
(`space.eval.spec_bench`).
"""

from __future__ import annotations

from space.cli import parse_flags, run
from space.eval.spec_bench import ExportArgs, export_run


def main(argv=None) -> list:
    (args,) = parse_flags((ExportArgs,), argv, "export_spec_bench.py", __doc__.split("\n\n")[0])
    written = export_run(args.run_dir, args.answer_file, args.model_id)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    run(main)
