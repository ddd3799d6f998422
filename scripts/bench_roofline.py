"""A measured roofline per dtype: bandwidth, bytes per token, the AR limit, AR and SPACE ms/step against it.

Also measures the forward cost curve (ms of one cached forward of N = 1..64 rows) and where an AR
step's time goes. The work is `space.bench.roofline.measure_roofline` (its docstring says what is
measured); writes JSON and prints a markdown table. Other code reads the cost curve back with
`space.bench.roofline.load_cost_curve(path, device, dtype)`.

    python scripts/bench_roofline.py --dtypes float32,bfloat16 --output docs/results/roofline_cpu.json
"""

from __future__ import annotations

import sys

from space.bench.roofline import measure_roofline, parse_roofline_args, roofline_table
from space.cli import run


def main(argv=None) -> dict:
    args = parse_roofline_args(argv, description=__doc__.split("\n\n")[0])
    command = "python scripts/bench_roofline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = measure_roofline(args, command=command)
    print(roofline_table(report))
    return report


if __name__ == "__main__":
    run(main)
