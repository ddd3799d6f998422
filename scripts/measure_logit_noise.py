"""Measure the logit noise of a dtype: the same positions computed in forwards of different shapes.

A lossless decoder computes AR's logits over other batch shapes (a verify chunk instead of one row),
so its logits differ from AR's in the last bits. This script computes the logits of every position
of HumanEval prompts plus their canonical solutions twice, as one prefill and one row at a time with
the KV cache, and writes the largest and the 99th-percentile |difference| per dtype as JSON. The
near-tie thresholds of the divergence report (`space.eval.divergence.NEAR_TIE_BY_DTYPE`) are set from it.
The work is `space.bench.logit_noise.measure_logit_noise`.

    python scripts/measure_logit_noise.py --num_samples 8 --output docs/results/logit_noise.json
"""

from __future__ import annotations

from space.bench.logit_noise import measure_logit_noise, parse_logit_noise_args
from space.cli import run


def main(argv=None) -> dict:
    record = measure_logit_noise(parse_logit_noise_args(argv, description=__doc__.split("\n\n")[0]))
    for dtype, noise in record["noise"].items():
        print(f"{dtype}: {noise}")
    return record


if __name__ == "__main__":
    run(main)
