"""The step cost a gated adapter adds: SmolLM2 with and without a random gated adapter of the recipe's shape.

Interleaved AR, chain and tree decodes of one HumanEval-sized prompt (`space.bench.gated_step_cost` says how and
why random weights suffice). Writes JSON and prints a markdown table.

    python scripts/bench_gated_step.py --output docs/results/gated/bench_gated_step.json
"""

from __future__ import annotations

import sys

from space.bench.gated_step_cost import gated_step_table, parse_gated_step_args, run_gated_step
from space.cli import run


def main(argv=None) -> dict:
    args = parse_gated_step_args(argv, description=__doc__.split("\n\n")[0])
    command = "python scripts/bench_gated_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    written = run_gated_step(args, command)
    print(gated_step_table(written["rows"]))
    return written


if __name__ == "__main__":
    run(main)
