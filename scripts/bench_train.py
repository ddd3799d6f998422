"""Training throughput of SAR-SFT (truncating and multi-block modes) against plain SFT on the same data.

Runs `space.training.train` (the recipe of `scripts/train_sft.py`) in-process for a few optimizer steps per mode on
the same records (batch 1, same seed) and reports seconds per sample, real tokens per second, mask predictions per
sample, and the cost of each mode relative to plain SFT. The work is
`space.bench.training_throughput.measure_training_throughput`. Writes JSON and prints a markdown table.

    python scripts/bench_train.py --dataset ../shared/data/lima.json --steps 12 --output docs/results/bench_train.json
"""

from __future__ import annotations

import shlex
import sys

from space.bench.training_throughput import measure_training_throughput, parse_throughput_args, throughput_table
from space.cli import run


def main(argv=None) -> dict:
    args = parse_throughput_args(argv, description=__doc__.split("\n\n")[0])
    command = "python scripts/bench_train.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = measure_training_throughput(args, command=command)
    print(throughput_table(report["rows"]))
    return report


if __name__ == "__main__":
    run(main)
