"""Measure the logit noise of a dtype: the same positions computed in forwards of different shapes.

A lossless decoder computes AR's logits over other batch shapes (a verify chunk instead of one row),
so its logits differ from AR's in the last bits. This script computes the logits of every position
of HumanEval prompts plus their canonical solutions twice, as one prefill and one row at a time with
the KV cache, and writes the largest and the 99th-percentile |difference| per dtype as JSON. The
near-tie thresholds of the divergence report (`space.eval.divergence.NEAR_TIE_BY_DTYPE`) are set from it.

    python scripts/measure_logit_noise.py --num_samples 8 --output docs/results/logit_noise.json
"""

from __future__ import annotations

import argparse
import platform

import torch
import transformers
from tqdm import tqdm

import space
from space.cache import CompactCache
from space.decoding.common import Model
from space.eval.datasets import load_eval_dataset
from space.io import write_json


@torch.inference_mode()
def position_noise(target: Model, ids: torch.Tensor) -> torch.Tensor:
    """Per position, the largest |logit difference| between a prefill and row-by-row cached forwards."""
    n = ids.numel()
    prefill = target.logits(target.hidden(ids, torch.arange(n, device=target.device)))
    cache = CompactCache.for_model(target.model, n)
    rows = [target.logits(target.hidden(ids[i : i + 1], torch.arange(i, i + 1, device=target.device), cache=cache))
            for i in range(n)]
    return (prefill - torch.cat(rows)).abs().max(dim=-1).values


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model path or name (default: the shipped SPACE model)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma list of dtypes")
    parser.add_argument("--num_samples", type=int, default=8, help="HumanEval problems (>= 1)")
    parser.add_argument("--output", default="outputs/logit_noise.json")
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error("--num_samples must be >= 1")
    problems = load_eval_dataset("human_eval", num_samples=args.num_samples)
    results = {}
    for dtype in args.dtypes.split(","):
        model, tokenizer = space.load_model(args.model, dtype=dtype)
        target = Model(model)
        noise = torch.cat([
            position_noise(target, tokenizer(p.problem["prompt"] + p.problem["canonical_solution"],
                                             return_tensors="pt").input_ids[0].to(target.device))
            for p in tqdm(problems, desc=dtype)
        ])
        results[dtype] = dict(positions=noise.numel(), max=float(noise.max()),
                              p99=float(noise.quantile(0.99)), mean=float(noise.mean()))
        print(f"{dtype}: {results[dtype]}")
    record = dict(model=args.model or "shipped SPACE model", num_samples=args.num_samples, noise=results,
                  torch=torch.__version__, transformers=transformers.__version__, machine=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads())
    write_json(args.output, record)
    return record


if __name__ == "__main__":
    main()
