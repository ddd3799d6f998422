"""The logit noise of a dtype: the same positions computed in forwards of different shapes.

A lossless decoder computes AR's logits over other batch shapes (a verify chunk instead of one row),
so its logits differ from AR's in the last bits. This module owns that measurement (the one behind
`scripts/measure_logit_noise.py`): its flags (`LogitNoiseArgs`), the logits of every position of
HumanEval prompts plus their canonical solutions computed twice, as one prefill and one row at a time
with the KV cache, and the JSON record of the largest, 99th-percentile and mean |difference| per dtype.
The near-tie thresholds of the divergence report (`space.eval.divergence.NEAR_TIE_BY_DTYPE`) are set
from it; it does not own them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import space
from space.cache import CompactCache
from space.cli import parse_flags, require_counts
from space.decoding.common import Model
from space.eval.datasets import load_eval_dataset
from space.io import provenance, write_json


@dataclass
class LogitNoiseArgs:
    """The measurement's settings (the flags of `scripts/measure_logit_noise.py`)."""

    model: str | None = field(default=None, metadata={"help": "model path or name (default: the shipped SPACE model)"})
    dtypes: str = field(default="float32,bfloat16", metadata={"help": "comma list of dtypes"})
    num_samples: int = field(default=8, metadata={"help": "HumanEval problems (>= 1)"})
    output: str = "outputs/logit_noise.json"


def parse_logit_noise_args(argv: list[str] | None = None, description: str | None = None) -> LogitNoiseArgs:
    """`argv` (default: the command line) -> `LogitNoiseArgs`; a bad flag or value is one `SpaceError` line."""
    (args,) = parse_flags((LogitNoiseArgs,), argv, "measure_logit_noise.py", description, show_defaults=False)
    require_counts(args, ("num_samples",))
    return args


def measure_logit_noise(args: LogitNoiseArgs) -> dict:
    """The noise of each of `args.dtypes` over `args.num_samples` HumanEval problems; written to `args.output`."""
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
    record = dict(model=args.model or "shipped SPACE model", num_samples=args.num_samples, noise=results,
                  provenance=provenance())
    write_json(args.output, record)
    return record


@torch.inference_mode()
def position_noise(target: Model, ids: torch.Tensor) -> torch.Tensor:
    """Per position, the largest |logit difference| between a prefill and row-by-row cached forwards."""
    n = ids.numel()
    prefill = target.logits(target.hidden(ids, torch.arange(n, device=target.device)))
    cache = CompactCache.for_model(target.model, n)
    rows = [target.logits(target.hidden(ids[i : i + 1], torch.arange(i, i + 1, device=target.device), cache=cache))
            for i in range(n)]
    return (prefill - torch.cat(rows)).abs().max(dim=-1).values
