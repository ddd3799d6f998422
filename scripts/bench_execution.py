"""Time the sandbox: seconds per problem of canonical HumanEval-X solutions, isolated and not, per language.

    python scripts/bench_execution.py --problems 20 --output docs/results/execution_time.json

Run it on an idle machine (nothing else running): it measures wall time. The work is
`space.bench.execution.time_execution`.
"""

from __future__ import annotations

import argparse
import json
import platform

from space.cli import run
from space.bench.execution import time_execution
from space.eval.datasets import HUMANEVAL_LANGUAGES
from space.io import write_json


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--languages", default=",".join(HUMANEVAL_LANGUAGES))
    parser.add_argument("--problems", type=int, default=20, help="the first N problems of each language")
    parser.add_argument("--output", default="outputs/execution_time.json")
    args = parser.parse_args(argv)
    results = time_execution([x for x in args.languages.split(",") if x], args.problems)
    report = dict(results=results, machine=platform.processor() or platform.machine(), python=platform.python_version())
    write_json(args.output, report)
    print(json.dumps(results, indent=2))
    return report


if __name__ == "__main__":
    run(main)
