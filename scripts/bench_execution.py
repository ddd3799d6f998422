"""Time the sandbox: seconds per problem of canonical HumanEval-X solutions, isolated and not, per language.

    python scripts/bench_execution.py --problems 20 --output docs/results/execution_time.json

Run it on an idle machine (nothing else running): it measures wall time. The work is
`space.bench.execution.measure_execution`.
"""

from __future__ import annotations

import json

from space.bench.execution import measure_execution, parse_execution_args
from space.cli import run


def main(argv=None) -> dict:
    report = measure_execution(parse_execution_args(argv, description=__doc__.split("\n\n")[0]))
    print(json.dumps(report["results"], indent=2))
    return report


if __name__ == "__main__":
    run(main)
