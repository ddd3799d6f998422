"""Per-step cost of SPACE against AR on a real model: how much of a step is the model's own work.

For AR and for SPACE at each k it decodes the same prompt and splits the wall time of every step
into the model's own work (backbone forward + lm_head, timed with `torch.profiler` ranges) and
everything else: `overhead_ms`. The work is `space.bench.step_cost.measure_step_costs` (its docstring
says how it is measured). Writes JSON and prints a markdown table.

    python scripts/bench_step.py --ks 1,2,3,4,5 --output docs/results/bench_step.json
"""

from __future__ import annotations

import sys

from space.bench.step_cost import measure_step_costs, parse_step_cost_args, step_cost_table
from space.cli import run


def main(argv=None) -> dict:
    args = parse_step_cost_args(argv, description=__doc__.split("\n\n")[0])
    command = "python scripts/bench_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = measure_step_costs(args, command=command)
    print(step_cost_table(report["rows"]))
    return report


if __name__ == "__main__":
    run(main)
