"""A measured memory-bandwidth roofline for one decoding step, and the forward cost curve.

Owns the measurement behind `scripts/bench_roofline.py`: its flags (`RooflineArgs`), the pieces it
measures, the JSON report it writes, its markdown table, and the reader other code uses for the cost
curve (`load_cost_curve`). It does not own the decoders (`space.decode`) nor the model's forward
(`space.decoding.common.Model`), which it calls as the decoders do.

Batch-1 decoding reads every weight once per forward, so an AR step cannot beat
`bytes_per_token / bandwidth` (`limit_ms`). Per dtype the report holds:

* `measure_bandwidth`: stream read bandwidth of the device (best of N sums over a large tensor);
* `bytes_per_token`: what one AR token reads (weights the forward touches + the KV cache), from the
  model's parameters and config;
* `step_times`: ms per step of AR and SPACE through `space.decode`, and their ratio to the limit;
* `plain_and_default_ar`: the default load's AR step against a plain HF load of the same weights (no
  packed products, no lean layers) in the same AR loop, alternating;
* `cost_curve`: ms of one cached forward feeding N rows (a verify step) for N = 1..64;
* `profile_step`: the ops an AR step spends its time in (`torch.profiler`), to show what is not
  reading weights.

The cost curves are saved under `cost_curves["<device>/<dtype>"]` in the JSON and read back with
`load_cost_curve(path, device, dtype).ms(rows)`; `--store_curves true` also stores them in the package, where
SPACE's tree prices rows on that device by default (`space.decoding.row_cost.device_curve`).
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import space
from space.bench.step_cost import PROMPT  # the prompt of scripts/bench_step.py, so the two reports compare
from space.cache import CompactCache
from space.cli import parse_flags, require_counts
from space.decoding.common import Model
from space.decoding.row_cost import STORED_CURVES, CostCurve, stored_curves
from space.errors import SpaceError
from space.eval.harness import timed_decode
from space.io import markdown_table, provenance, shipped, write_json
from space.models import dtype_name, resolve_device, synchronize

SCRIPT = "python scripts/bench_roofline.py"
DEFAULT_MODEL = "shipped SPACE model (SmolLM2-135M-Instruct + space/default_model adapter)"
COLUMNS = ["dtype", "bandwidth_gb_s", "mb_per_token", "limit_ms", "plain_ar_ms_per_step", "ar_ms_per_step",
           "ar_vs_limit", "plain_vs_ar", "space_ms_per_step", "space_vs_limit", "space_vs_ar"]
HEADERS = ["dtype", "bandwidth GB/s", "MB/token", "limit ms", "plain HF AR ms/step", "AR ms/step", "AR / limit",
           "plain / AR", "SPACE ms/step", "SPACE / limit", "SPACE / AR"]


@dataclass
class RooflineArgs:
    """The measurement's settings (the flags of `scripts/bench_roofline.py`)."""

    model: str | None = field(default=None, metadata={"help": "HF dir, hub name, .gguf or adapter dir (default: "
                                                               "the shipped SPACE model)"})
    dtypes: str = field(default="float32", metadata={"help": "comma list, e.g. float32,bfloat16; the model is "
                                                             "loaded once per dtype"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    context_tokens: int = field(default=256, metadata={"help": "cached tokens before the measured forwards"})
    rows: str = field(default="1-64", metadata={"help": "rows fed per forward on the cost curve: '1-64' or '1,2,4,8'"})
    repeats: int = field(default=5, metadata={"help": "timed runs of each measurement; the median is reported"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens each timed decode generates"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's choice)"})
    output: str = "outputs/roofline.json"
    store_curves: bool = field(default=False, metadata={
        "help": "also store the measured cost curves in the package (space/configs/cost_curves/curves.json), where "
                "SPACE's tree reads the device's price of rows"})


def parse_roofline_args(argv: list[str] | None = None, description: str | None = None) -> RooflineArgs:
    """`argv` (default: the command line) -> `RooflineArgs`; a bad flag is one `SpaceError` line."""
    (args,) = parse_flags((RooflineArgs,), argv, "bench_roofline.py", description, show_defaults=False)
    return args


def parse_rows(text: str) -> list[int]:
    """'1-64', '1,2,4,8' or a mix ('1-8,16,32') -> sorted distinct row counts >= 1."""
    rows = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            rows.update(range(int(low), int(high or low) + 1))
    except ValueError:
        rows = set()
    if not rows or min(rows) < 1:
        raise SpaceError(f"--rows {text!r} is not a row range: use e.g. '1-64' or '1,2,4,8' (every count >= 1)")
    return sorted(rows)


def curve_key(device: str | torch.device, dtype: str | torch.dtype) -> str:
    """The `cost_curves` key: device type ('cpu', 'cuda') / dtype name."""
    return f"{torch.device(device).type}/{dtype_name(dtype)}"


# --- the measurements ------------------------------------------------------------------------


def _timed_ms(function, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


def measure_bandwidth(device: str | torch.device = "cpu", megabytes: int = 256, repeats: int = 10) -> float:
    """Stream read bandwidth in GB/s: the best of `repeats` `sum()`s over a `megabytes` fp32 tensor.

    The best, not the median: the roofline is what the memory can do, and interference only slows it.
    """
    device = torch.device(device)
    data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32, device=device)
    data.sum()  # warm-up: first-touch page faults, kernel selection
    best_ms = min(_timed_ms(data.sum, device) for _ in range(repeats))
    return data.numel() * data.element_size() / (best_ms / 1000) / 1e9


def bytes_per_token(model, context_tokens: int) -> dict:
    """Bytes one AR token reads: the weights its forward touches plus the KV cache at `context_tokens`.

    Weights: every backbone parameter except the input embedding, of which a token reads one row, plus
    lm_head; a tied embedding is counted once, as lm_head. `Model.logits` multiplies by an fp32 copy of
    a half-precision lm_head (see its docstring), so lm_head counts 4 bytes per element whatever the
    model's dtype: that is what an AR step reads. Sliding windows are ignored (every layer reads all
    `context_tokens`).
    """
    config = model.config
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embedding.data_ptr() and head.shape == embedding.shape
    body = sum(p.numel() * p.element_size() for p in model.get_decoder().parameters() if p is not embedding)
    head_bytes = head.numel() * 4  # fp32, as Model.logits reads it
    row_bytes = 0 if tied else embedding.shape[1] * embedding.element_size()
    weights = body + head_bytes + row_bytes
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * context_tokens * embedding.element_size()
    return dict(weights_bytes=weights, head_bytes=head_bytes, kv_bytes=kv, total=weights + kv, tied=tied)


def _random_ids(model: Model, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (count,), generator=generator).to(model.device)


def _prefilled(model: Model, context_tokens: int, extra: int, seed: int) -> tuple[CompactCache, torch.Tensor]:
    """A cache holding `context_tokens` random tokens, and `context_tokens + extra` ids (the rest to feed)."""
    ids = _random_ids(model, context_tokens + extra, seed)
    cache = CompactCache.for_model(model.model, context_tokens + extra)
    if context_tokens:
        model.hidden(ids[:context_tokens], torch.arange(context_tokens, device=model.device), cache=cache)
    return cache, ids


def _verify_step(model: Model, cache: CompactCache, ids: torch.Tensor, rows: int) -> None:
    """One forward feeding `rows` tokens after the cache's prefix, with logits of every row (a chain
    verify reads them all; SPACE reads only its k + 1 verify rows), then the cache cut back to its
    prefix (as a decoder drops rejected rows).

    attention_mask=None: the backbone then builds the plain causal mask for the chunk from the cache
    length and the positions (`create_causal_mask`), as self-speculative verification relies on; a
    decoder's own 4D mask (SPACE) costs the same attention work, its building is decoder overhead.
    """
    start = cache.length
    hidden = model.hidden(ids[start:start + rows], torch.arange(start, start + rows, device=model.device),
                          attention_mask=None, cache=cache)
    model.logits(hidden)
    cache.truncate(start)


@torch.inference_mode()
def cost_curve(model, rows=None, context_tokens: int = 256, repeats: int = 5, seed: int = 0) -> dict:
    """Median ms of one cached forward feeding N rows after `context_tokens` cached tokens, for N in
    `rows` (default 1..64): what a decoder's verify step of N rows costs.

    Returns `{"rows": [...], "ms": [...], "context_tokens": ...}`, the format saved in the report.
    """
    rows = sorted(set(rows if rows is not None else range(1, 65)))
    target = Model(model)
    cache, ids = _prefilled(target, context_tokens, max(rows), seed)
    medians = []
    for n in rows:
        _verify_step(target, cache, ids, n)  # warm-up: kernels and buffers for this shape
        times = [_timed_ms(lambda: _verify_step(target, cache, ids, n), target.device) for _ in range(repeats)]
        medians.append(statistics.median(times))
    return dict(rows=rows, ms=medians, context_tokens=context_tokens)


def plain_and_default_ar(model, plain, prompt_ids: torch.Tensor, max_new_tokens: int = 64, repeats: int = 3) -> dict:
    """AR ms per step of the default load (`model`) and of a plain HF load of the same weights (`plain`: no
    packed products, no lean layers), decoded by the same AR loop, runs alternating so drift hits both."""
    options = dict(max_new_tokens=max_new_tokens, eos_token_id=[])
    loads = {"default": model, "plain": plain}
    for loaded in loads.values():
        space.decode(loaded, prompt_ids, "ar", **options)
    per_step = {name: [] for name in loads}
    for repeat in range(repeats):
        for name in (("default", "plain") if repeat % 2 == 0 else ("plain", "default")):
            result, seconds = timed_decode(loads[name], prompt_ids, "ar", options)
            per_step[name].append(seconds * 1000 / result.stats.steps)
    return {name: statistics.median(values) for name, values in per_step.items()}


def step_times(model, prompt_ids: torch.Tensor, methods=("ar", "space"), max_new_tokens: int = 64,
               repeats: int = 3) -> dict:
    """Per method: median ms per step of `space.decode` over `repeats` runs after a warm-up, its steps
    and tokens per step. EOS is off, so every run decodes `max_new_tokens` tokens. ms/step is a
    decode's wall time over its steps, the first of which also prefills the prompt (as in
    `scripts/bench_step.py`), so a short decode overstates the per-step cost."""
    measured = {}
    for method in methods:
        options = dict(max_new_tokens=max_new_tokens, eos_token_id=[])
        space.decode(model, prompt_ids, method, **options)
        per_step, result = [], None
        for _ in range(repeats):
            result, seconds = timed_decode(model, prompt_ids, method, options)
            per_step.append(seconds * 1000 / result.stats.steps)
        measured[method] = dict(ms_per_step=statistics.median(per_step), steps=result.stats.steps,
                                tokens_per_step=result.stats.mean_tokens_per_step)
    return measured


@torch.inference_mode()
def profile_step(model, context_tokens: int = 256, steps: int = 8, top: int = 10, seed: int = 0) -> list[dict]:
    """Where an AR step's time goes: the `top` ops by self time over `steps` one-row forwards (+ logits)
    after `context_tokens` cached tokens, as `{name, ms_per_step, share}` (share of all profiled ops).

    On CPU ops are ranked by self CPU time; on CUDA by the GPU time of the kernels (the CPU time there is
    only the launch).
    """
    target = Model(model)
    cache, ids = _prefilled(target, context_tokens, 1, seed)
    _verify_step(target, cache, ids, 1)  # warm-up
    on_cuda = target.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            _verify_step(target, cache, ids, 1)
        synchronize(target.device)
    if on_cuda:
        microseconds = {e.key: e.self_device_time_total for e in profiler.key_averages()
                        if e.device_type == torch.autograd.DeviceType.CUDA}
    else:
        microseconds = {e.key: e.self_cpu_time_total for e in profiler.key_averages()}
    total = sum(microseconds.values()) or 1.0
    ranked = sorted(microseconds.items(), key=lambda item: item[1], reverse=True)[:top]
    return [dict(name=name, ms_per_step=us / 1000 / steps, share=us / total) for name, us in ranked]


# --- the report --------------------------------------------------------------------------------


def _prompt_ids(tokenizer) -> torch.Tensor:
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = PROMPT
    return tokenizer(text, return_tensors="pt").input_ids


def measure_roofline(args: RooflineArgs, command: str) -> dict:
    """Bandwidth once, then per dtype of `args.dtypes`: bytes per token, the limit, AR and SPACE ms per
    step against it, the cost curve and the AR profile. Writes the report (`command` names how it was
    made) atomically to `args.output` and returns it."""
    rows = parse_rows(args.rows)  # every flag is checked before anything is loaded or measured
    dtypes = [dtype_name(d.strip()) for d in args.dtypes.split(",") if d.strip()]
    device = resolve_device(args.device)
    require_counts(args, ("context_tokens", "repeats", "max_new_tokens", "threads"))
    if not dtypes:
        raise SpaceError("--dtypes is empty: use e.g. float32,bfloat16")
    if args.threads:
        torch.set_num_threads(args.threads)

    bandwidth = measure_bandwidth(device, repeats=max(args.repeats, 5))
    table, details, curves, prompt_tokens = [], {}, {}, None
    for dtype in dtypes:
        model, tokenizer = space.load_model(args.model, dtype=dtype, device=device)
        prompt_ids = _prompt_ids(tokenizer)
        prompt_tokens = prompt_ids.shape[1]
        read = bytes_per_token(model, args.context_tokens)
        limit_ms = read["total"] / (bandwidth * 1e9) * 1000
        steps = step_times(model, prompt_ids, ("ar", "space"), args.max_new_tokens, args.repeats)
        plain, _ = space.load_model(args.model, dtype=dtype, device=device, fast_cpu_linear=False, lean_layers=False)
        against_plain = plain_and_default_ar(model, plain, prompt_ids, args.max_new_tokens, args.repeats)
        del plain
        curve = cost_curve(model, rows, args.context_tokens, args.repeats)
        ar, spaced = steps["ar"]["ms_per_step"], steps["space"]["ms_per_step"]
        table.append(dict(dtype=dtype, bandwidth_gb_s=bandwidth, mb_per_token=read["total"] / 1e6, limit_ms=limit_ms,
                          plain_ar_ms_per_step=against_plain["plain"], ar_ms_per_step=ar, ar_vs_limit=ar / limit_ms,
                          plain_vs_ar=against_plain["plain"] / against_plain["default"], space_ms_per_step=spaced,
                          space_vs_limit=spaced / limit_ms, space_vs_ar=spaced / ar,
                          space_tokens_per_step=steps["space"]["tokens_per_step"]))
        details[dtype] = dict(bytes_per_token=read, step_times=steps, plain_against_default_ar=against_plain,
                              profile=profile_step(model, args.context_tokens, steps=max(args.repeats, 4)))
        curves[curve_key(device, dtype)] = curve
        del model, tokenizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    written = dict(
        command=command,
        model=args.model or DEFAULT_MODEL,
        device=str(device),
        provenance=provenance(device),
        bandwidth_gb_s=bandwidth,
        context_tokens=args.context_tokens,
        prompt_tokens=prompt_tokens,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        rows=table,
        dtypes=details,
        cost_curves=curves,
    )
    write_json(args.output, written)
    if args.store_curves:
        store_cost_curves(curves, command)
    return written


def store_cost_curves(curves: dict, command: str) -> Path:
    """Merge `curves` ({"<device>/<dtype>": curve}) into the package's stored curves (`device_curve` reads them)."""
    path = shipped(*STORED_CURVES)
    stored = stored_curves()
    for key, curve in curves.items():
        stored[key] = dict(rows=curve["rows"], ms=curve["ms"], context_tokens=curve["context_tokens"], command=command,
                           provenance=provenance(key.split("/")[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, stored)
    return path


def roofline_table(report: dict) -> str:
    """The report as a markdown table, one row per dtype."""
    return markdown_table(report["rows"], COLUMNS, HEADERS)


# --- the cost curve, for other code ------------------------------------------------------------


def load_cost_curve(path: str | Path, device: str | torch.device, dtype: str | torch.dtype) -> CostCurve:
    """The cost curve of `device` ('cpu', 'cuda') and `dtype` from a report written by `measure_roofline`."""
    path = Path(path)
    key = curve_key(device, dtype)
    make = f"make it with `{SCRIPT} --device {torch.device(device).type} --dtypes {dtype_name(dtype)} --output {path}`"
    try:
        curves = json.loads(path.read_text())["cost_curves"]
    except FileNotFoundError:
        raise SpaceError(f"no roofline report at {path}: {make}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SpaceError(f"{path} is not a roofline report ({error!r}): {make}") from None
    if key not in curves:
        raise SpaceError(f"{path} has no cost curve for {key} (it has {sorted(curves) or 'none'}): {make}")
    curve = curves[key]
    try:
        rows, ms, context = list(curve["rows"]), list(curve["ms"]), int(curve["context_tokens"])
        CostCurve.from_points(dict(zip(rows, ms, strict=True)))  # whole rows, finite positive times
    except (KeyError, TypeError, ValueError) as error:
        raise SpaceError(f"{path}: the cost curve for {key} is damaged ({error!r}): {make}") from None
    return CostCurve(rows=rows, measured_ms=ms, context_tokens=context)
