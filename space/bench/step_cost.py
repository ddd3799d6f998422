"""The per-step cost of SPACE against AR on a real model: how much of a step is the model's own work.

Owns the measurement behind `scripts/bench_step.py`: its flags (`StepCostArgs`), the profiled
decodes, the JSON report it writes and its markdown table. It does not own the decoders (`space.decode`).

For AR and for SPACE's chain (`tree=False`: the paper's step of 1 + k(k+2) rows) at each k it decodes the same
prompt and splits the wall time of every step into the model's own work (backbone forward + lm_head) and everything
else (input and mask building, verification, cache compaction, Python): `overhead_ms`. Both parts are measured in the
same run, so machine noise cannot make one look cheaper than the other: `torch.profiler` records the
decode call and the model's parts as `record_function` ranges (opened and closed by forward hooks
on the backbone and lm_head, so nothing is patched) and its key averages give their times. The
profiler adds a few microseconds to every op it records, in the model's part and in the overhead
alike.

With untrained mask tokens SPACE accepts few drafts, so `step_cost_vs_ar` is the price a SPACE step
must earn back with accepted drafts.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import space
from space.cli import count_list, parse_flags, require_counts
from space.io import markdown_table, provenance, write_atomic

PROMPT = ("Complete the following python code.\n\ndef running_mean(values: list[float]) -> list[float]:\n"
          "    \"\"\"Return the running mean of values.\"\"\"\n")
DECODE_RANGE = "bench_step.decode"
# The model's own work: the profiler range each part's forward runs in.
MODEL_RANGES = {"bench_step.backbone": lambda model: model.get_decoder(),
                "bench_step.lm_head": lambda model: model.get_output_embeddings()}
COLUMNS = ["method", "k", "fed_tokens", "ms_per_step", "model_ms", "overhead_ms", "step_cost_vs_ar", "tokens_per_step"]
HEADERS = ["method", "k", "fed tokens", "ms/step", "model ms/step", "overhead ms/step", "step cost vs AR",
           "tokens/step"]


@dataclass
class StepCostArgs:
    """The measurement's settings (the flags of `scripts/bench_step.py`)."""

    model: str | None = field(default=None, metadata={"help": "HF dir, hub name, .gguf or adapter dir (default: the "
                                                               "SmolLM2 base with untrained mask tokens)"})
    ks: str = field(default="1,2,3,5", metadata={"help": "comma list of mask_num values"})
    max_new_tokens: int = 64
    repeats: int = field(default=3, metadata={"help": "timed runs per method; the median is reported"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    output: str = "outputs/bench_step.json"


def parse_step_cost_args(argv: list[str] | None = None, description: str | None = None) -> StepCostArgs:
    """`argv` (default: the command line) -> `StepCostArgs`; a bad flag is one `SpaceError` line."""
    (args,) = parse_flags((StepCostArgs,), argv, "bench_step.py", description, show_defaults=False)
    require_counts(args, ("max_new_tokens", "repeats", "threads"))
    mask_nums(args)
    return args


def mask_nums(args: StepCostArgs) -> list[int]:
    """`--ks` as the list of k it names: one line for anything but a comma list of whole numbers >= 1."""
    return count_list("ks", args.ks, "1,2,3,5")


def measure_step_costs(args: StepCostArgs, command: str) -> dict:
    """Profile AR and SPACE at each k of `args.ks`; writes the report (`command` names how it was made) to
    `args.output`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = mask_nums(args)
    model, tokenizer = space.load_model(args.model or "smollm2")
    if space.read_mask_spec(model.config) is None:
        space.add_mask_tokens(model, tokenizer, mask_num=max(ks))
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    prompt_ids = tokenizer(text, return_tensors="pt").input_ids
    common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])  # AR and the chain: fixed rows per step

    ar = measure(model, prompt_ids, "ar", args.repeats, **common)
    rows = [dict(method="ar", k=0, fed_tokens=1, ms_per_step=ar["ms_per_step"], model_ms=ar["model_ms"],
                 overhead_ms=ar["overhead_ms"], step_cost_vs_ar=1.0, tokens_per_step=1.0)]
    for k in ks:
        spaced = measure(model, prompt_ids, "space", args.repeats, mask_num=k, tree=False, **common)
        if spaced["result"].tokens.tolist() != ar["result"].tokens.tolist():
            raise RuntimeError(f"SPACE output differs from AR at k={k}")
        rows.append(dict(method="space", k=k, fed_tokens=1 + k * (k + 2), ms_per_step=spaced["ms_per_step"],
                         model_ms=spaced["model_ms"], overhead_ms=spaced["overhead_ms"],
                         step_cost_vs_ar=spaced["ms_per_step"] / ar["ms_per_step"],
                         tokens_per_step=spaced["result"].stats.mean_tokens_per_step))
    rows = [{key: round(value, 2) if isinstance(value, float) else value for key, value in row.items()} for row in rows]
    written = dict(
        command=command,
        model=args.model or "SmolLM2-135M-Instruct (GGUF, fp32), untrained mask tokens",
        prompt_tokens=prompt_ids.shape[1],
        max_new_tokens=args.max_new_tokens,
        provenance=provenance(),
        rows=rows,
    )
    write_atomic(args.output, json.dumps(written, indent=2))
    return written


def step_cost_table(rows: list[dict]) -> str:
    """The report's rows as a markdown table (as quoted in docs/benchmarks.md)."""
    return markdown_table(rows, COLUMNS, HEADERS)


def measure(model, prompt_ids, method: str, repeats: int, **options) -> dict:
    """Median over `repeats` runs (after one warm-up) of total and model-only milliseconds per step."""
    space.decode(model, prompt_ids, method, **options)
    totals, model_parts, result = [], [], None
    for _ in range(repeats):
        result, total_ms, model_ms = profiled_decode(model, prompt_ids, method, **options)
        totals.append(total_ms / result.stats.steps)
        model_parts.append(model_ms / result.stats.steps)
    total, model_ms = statistics.median(totals), statistics.median(model_parts)
    return dict(result=result, ms_per_step=total, model_ms=model_ms, overhead_ms=total - model_ms)


def profiled_decode(model, prompt_ids, method: str, **options):
    """One decode under the profiler: (result, total ms, model ms)."""
    with model_ranges(model), profile(activities=[ProfilerActivity.CPU]) as profiler:
        with record_function(DECODE_RANGE):
            result = space.decode(model, prompt_ids, method, **options)
    microseconds = {event.key: event.cpu_time_total for event in profiler.key_averages()}
    model_us = sum(microseconds.get(name, 0.0) for name in MODEL_RANGES)
    return result, microseconds[DECODE_RANGE] / 1000, model_us / 1000


@contextlib.contextmanager
def model_ranges(model):
    """Every forward of the backbone and of lm_head runs inside its profiler range (see MODEL_RANGES)."""
    handles = []
    for name, part in MODEL_RANGES.items():
        open_ranges = []

        def enter(module, inputs, name=name, open_ranges=open_ranges):
            open_ranges.append(record_function(name).__enter__())

        def leave(module, inputs, output, open_ranges=open_ranges):
            open_ranges.pop().__exit__(None, None, None)

        module = part(model)
        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
