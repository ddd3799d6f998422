"""Throughput against batch size: AR, SPACE's chain and its tree, every row checked against batch-1 AR.

Decodes the prompts (HumanEval by default) in batches of each size with every method, interleaved, and reports
total generated tokens per second, the speedup over AR at the same batch size and the rows identical to their
batch-1 AR output. The work is `space.bench.batch_throughput` (its docstring says how it is measured); an
interrupted run resumes from the log beside the report.

    python scripts/bench_batch.py --batch_sizes 1,2,4,8,16 --output docs/results/batch/bench_batch.json
"""

from __future__ import annotations

import sys

from space.bench.batch_throughput import batch_table, parse_batch_args, run_batch_bench, upkeep_table
from space.cli import run


def main(argv=None) -> dict:
    args = parse_batch_args(argv, description=__doc__.split("\n\n")[0])
    command = "python scripts/bench_batch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = run_batch_bench(args, command=command)
    print(batch_table(report["rows"]))
    if report["cache_upkeep"]:
        print(upkeep_table(report["cache_upkeep"]))
    if report["figure"]:
        print(f"figure: {report['figure']}")
    return report


if __name__ == "__main__":
    run(main)
