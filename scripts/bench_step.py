"""Per-step cost of SPACE against AR on a real model: how much of a step is the model's own work.

For AR and for SPACE at each k it decodes the same prompt and splits the wall time of every step
into the model's own work (backbone forward + lm_head, timed around `Model.hidden` and
`Model.logits`) and everything else (input and mask building, verification, cache compaction,
Python): `overhead_ms`. Both parts are measured in the same run, so machine noise cannot make one
look cheaper than the other.

With untrained mask tokens SPACE accepts few drafts, so `step_cost_vs_ar` is the price a SPACE step
must earn back with accepted drafts. Writes JSON and prints a markdown table.

    python scripts/bench_step.py --ks 1,2,3,4,5 --output docs/results/bench_step.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run  # noqa: E402
from space.decoding.common import Model  # noqa: E402
from space.eval import report  # noqa: E402

PROMPT = "Complete the following python code.\n\ndef running_mean(values: list[float]) -> list[float]:\n    \"\"\"Return the running mean of values.\"\"\"\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF dir, hub name, .gguf or adapter dir (default: the SmolLM2 base "
                        "with untrained mask tokens)")
    parser.add_argument("--ks", default="1,2,3,5", help="comma list of mask_num values")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", default="outputs/bench_step.json")
    return parser.parse_args(argv)


@contextlib.contextmanager
def model_timer():
    """Accumulate the wall time spent inside `Model.hidden` and `Model.logits` (the model's own work)."""
    spent = [0.0]
    originals = Model.hidden, Model.logits

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    Model.hidden, Model.logits = timed(originals[0]), timed(originals[1])
    try:
        yield spent
    finally:
        Model.hidden, Model.logits = originals


def measure(model, prompt_ids, method: str, repeats: int, **options) -> dict:
    """Median over `repeats` runs (after one warm-up) of total and model-only milliseconds per step."""
    space.decode(model, prompt_ids, method, **options)
    totals, model_parts, result = [], [], None
    for _ in range(repeats):
        with model_timer() as spent:
            start = time.perf_counter()
            result = space.decode(model, prompt_ids, method, **options)
            total = time.perf_counter() - start
        totals.append(total * 1000 / result.stats.steps)
        model_parts.append(spent[0] * 1000 / result.stats.steps)
    total, model_ms = statistics.median(totals), statistics.median(model_parts)
    return dict(result=result, ms_per_step=total, model_ms=model_ms, overhead_ms=total - model_ms)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    model, tokenizer = space.load_model(args.model or "smollm2")
    if space.read_mask_spec(model.config) is None:
        space.add_mask_tokens(model, tokenizer, mask_num=max(ks))
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, return_tensors="pt").input_ids
    common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])

    ar = measure(model, prompt_ids, "ar", args.repeats, **common)
    rows = [dict(method="ar", k=0, fed_tokens=1, ms_per_step=ar["ms_per_step"], model_ms=ar["model_ms"],
                 overhead_ms=ar["overhead_ms"], step_cost_vs_ar=1.0, tokens_per_step=1.0)]
    for k in ks:
        run = measure(model, prompt_ids, "space", args.repeats, mask_num=k, **common)
        if run["result"].tokens.tolist() != ar["result"].tokens.tolist():
            raise RuntimeError(f"SPACE output differs from AR at k={k}")
        rows.append(dict(method="space", k=k, fed_tokens=1 + k * (k + 2), ms_per_step=run["ms_per_step"],
                         model_ms=run["model_ms"], overhead_ms=run["overhead_ms"],
                         step_cost_vs_ar=run["ms_per_step"] / ar["ms_per_step"],
                         tokens_per_step=run["result"].stats.mean_tokens_per_step))
    rows = [{key: round(value, 2) if isinstance(value, float) else value for key, value in row.items()} for row in rows]
    report = dict(
        command="python scripts/bench_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        model=args.model or "SmolLM2-135M-Instruct (GGUF, fp32), untrained mask tokens",
        prompt_tokens=prompt_ids.shape[1],
        max_new_tokens=args.max_new_tokens,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()}, {torch.get_num_threads()} threads",
        torch=torch.__version__,
        rows=rows,
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows))
    return report


def markdown_table(rows: list[dict]) -> str:
    columns = ["method", "k", "fed_tokens", "ms_per_step", "model_ms", "overhead_ms", "step_cost_vs_ar", "tokens_per_step"]
    headers = ["method", "k", "fed tokens", "ms/step", "model ms/step", "overhead ms/step", "step cost vs AR", "tokens/step"]
    return report.markdown_table(rows, columns, headers)


if __name__ == "__main__":
    run(main)
