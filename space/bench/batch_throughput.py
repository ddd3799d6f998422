"""Throughput against batch size: AR, SPACE's chain and its tree on the same batches of prompts.

Owns the measurement behind `scripts/bench_batch.py`: its flags (`BatchArgs`), the timed batched decodes, the
resumable log of every timed batch, the JSON report, its markdown table and its figure. It does not own the
decoders (`space.decode_batch`).

The prompts (HumanEval by default, rendered as the evaluation renders them) are sorted by length and cut into
consecutive chunks of `CHUNK` x B prompts. Each chunk is one call of `decode_batch` with `batch_size=B` (timed by
`space.eval.harness.timed_decode`): B prompts decode at once and a finished one's place goes to the next
(continuous batching), so a batch is never held back by its longest answer except at the chunk's end. For each
batch size every chunk is decoded by every method in turn (interleaved, so drift of the machine hits all methods
alike). Every row is compared with the row's batch-1 AR output, the reference every lossless method must
reproduce. A chunk's record goes to a JSONL log beside the report as soon as it is timed, so an interrupted run
resumes where it stopped (`--overwrite` starts over).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import space
from space.cache import CompactCache, cache_kwargs
from space.cli import count_list, parse_flags, require_counts
from space.errors import SpaceError
from space.eval.datasets import load_eval_dataset
from space.eval.harness import first_turn_ids, timed_decode
from space.io import JsonlLog, OutputLock, markdown_table, provenance, write_atomic
from space.models import synchronize

CHUNK = 4  # prompts per timed call, in batch sizes: the batch drains (runs below B rows) once per call
METHODS = {"ar": ("ar", {}), "chain": ("space", {"tree": False}), "tree": ("space", {"tree": True})}
COLUMNS = ["batch_size", "method", "tokens_per_second", "vs_ar", "tokens_per_step", "rows_per_step",
           "row_seconds", "identical_rows", "rows"]
HEADERS = ["batch", "method", "tokens/s", "vs AR (same batch)", "tokens/step (per row)", "rows fed/step (per row)",
           "s per prompt", "rows = batch-1 AR", "rows"]


@dataclass
class BatchArgs:
    """The measurement's settings (the flags of `scripts/bench_batch.py`)."""

    llm_dir: str | None = field(default=None, metadata={"help": "HF dir, .gguf or adapter dir (default: the shipped "
                                                                "SPACE model)"})
    dataset: str = "human_eval"
    num_samples: int | None = field(default=None, metadata={"help": "the first N prompts (default: all)"})
    batch_sizes: str = field(default="1,2,4,8,16", metadata={"help": "comma list of batch sizes"})
    methods: str = field(default="ar,chain,tree", metadata={"help": f"comma list of {list(METHODS)}"})
    max_new_tokens: int = 128
    mask_num: int | None = field(default=None, metadata={"help": "SPACE's k (default: the model's decoding k)"})
    device: str = "cpu"
    dtype: str = "auto"
    output: str = field(default="outputs/bench_batch.json", metadata={
        "help": "the report; the log of timed batches goes beside it (.jsonl), the figure too (.png)"})
    overwrite: bool = field(default=False, metadata={"help": "start over instead of resuming the log"})


def parse_batch_args(argv: list[str] | None = None, description: str | None = None) -> BatchArgs:
    """`argv` (default: the command line) -> `BatchArgs`; a bad flag is one `SpaceError` line, before any loading."""
    (args,) = parse_flags((BatchArgs,), argv, "bench_batch.py", description, show_defaults=False)
    require_counts(args, ("num_samples", "max_new_tokens", "mask_num"))
    batch_sizes(args)
    chosen_methods(args)
    return args


def batch_sizes(args: BatchArgs) -> list[int]:
    return count_list("batch_sizes", args.batch_sizes, "1,2,4,8,16")


def chosen_methods(args: BatchArgs) -> list[str]:
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise SpaceError(f"--methods takes a comma list of {list(METHODS)} (got {args.methods!r})")
    return methods


def digest(tokens: list[int]) -> str:
    """A short fingerprint of a row's tokens: the log compares rows without keeping every answer."""
    return hashlib.sha1(json.dumps(tokens).encode()).hexdigest()[:16]


def batches(lengths: list[int], size: int) -> list[list[int]]:
    """Prompt indices sorted by length (longest first), cut into consecutive chunks of `size`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + size] for start in range(0, len(order), size)]


def measure(model, prompts: list[torch.Tensor], args: BatchArgs, log: JsonlLog) -> list[dict]:
    """Time every method on every batch of every size (resuming `log`); returns every record of the log."""
    methods, sizes = chosen_methods(args), batch_sizes(args)
    records = log.resume()
    done = {(r["batch_size"], r["batch"], r["method"]) for r in records}
    lengths = [p.numel() for p in prompts]
    plan = [(size, index, rows) for size in sizes for index, rows in enumerate(batches(lengths, CHUNK * size))]
    options = {method: dict(extra, max_new_tokens=args.max_new_tokens) for method, (_, extra) in METHODS.items()}
    for method, (decoder, _) in METHODS.items():
        if decoder == "space" and args.mask_num is not None:
            options[method]["mask_num"] = args.mask_num
    warmed = False
    for size, index, rows in tqdm(plan, desc="batches", unit="batch"):
        if all((size, index, method) in done for method in methods):
            continue
        if not warmed:  # first-call costs (allocator, kernels) are paid before anything is timed
            for method in methods:
                space.decode_batch(model, [prompts[i] for i in rows[:size]], METHODS[method][0],
                                   **dict(options[method], max_new_tokens=8))
            warmed = True
        for method in methods:
            if (size, index, method) in done:
                continue
            results, seconds = timed_decode(model, [prompts[i] for i in rows], METHODS[method][0],
                                            dict(options[method], batch_size=size))
            record = dict(batch_size=size, batch=index, method=method, prompts=rows, seconds=seconds,
                          tokens=[r.tokens.numel() for r in results], steps=[r.stats.steps for r in results],
                          rows_fed=[sum(getattr(r.stats, "rows_per_step", []) or [0]) for r in results],
                          digests=[digest(r.tokens.tolist()) for r in results])
            log.append(record)
            records.append(record)
    return records


def summarize(records: list[dict], methods: list[str], sizes: list[int]) -> list[dict]:
    """Per batch size and method: total tokens per second, per-row tokens per step and rows fed per step, seconds
    per prompt (a chunk's time over its prompts, times the batch size: each prompt's share of the machine while it
    decodes), and how many rows equal their batch-1 AR output."""
    reference = {}
    for record in records:
        if record["method"] == "ar" and record["batch_size"] == 1:
            reference.update(zip(record["prompts"], record["digests"]))
    rows = []
    for size in sizes:
        speeds = {}
        for method in methods:
            chosen = [r for r in records if r["batch_size"] == size and r["method"] == method]
            if not chosen:
                continue
            tokens = sum(sum(r["tokens"]) for r in chosen)
            seconds = sum(r["seconds"] for r in chosen)
            steps = sum(sum(r["steps"]) for r in chosen)
            fed = sum(sum(r["rows_fed"]) for r in chosen)
            compared = [(reference.get(p), d) for r in chosen for p, d in zip(r["prompts"], r["digests"])
                        if p in reference]
            speeds[method] = tokens / seconds
            rows.append(dict(batch_size=size, method=method, tokens_per_second=round(tokens / seconds, 1),
                             tokens_per_step=round(tokens / steps, 2),
                             rows_per_step=round(fed / steps, 1) if fed else None,
                             row_seconds=round(seconds * size / sum(len(r["prompts"]) for r in chosen), 2),
                             identical_rows=f"{sum(a == b for a, b in compared)}/{len(compared)}" if compared else None,
                             rows=sum(len(r["prompts"]) for r in chosen)))
        for row in rows:
            if row["batch_size"] == size and "ar" in speeds:
                row["vs_ar"] = round(speeds[row["method"]] / speeds["ar"], 2)
    return rows


@torch.inference_mode()
def cache_upkeep(model, batch: int, context: int, repeats: int = 20, seed: int = 0) -> dict:
    """What keeping a batch's KV cache costs after one step, both ways, on `model`'s real cache shapes (ms, median):

    * `compact_ms`: this project's way: each row keeps its accepted entries in place (`CompactCache.compact_rows`:
      one gather and one scatter per layer for the whole batch), rows of different lengths;
    * `realign_ms`: left-padding's way: every row's entries shifted so that all rows end at the same column again
      (what left-pad-and-realign designs do whenever rows accept different counts), done as one copy per row.

    Each row has `context` entries and accepted between 0 and 3 of the 8 fed in this step."""
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator().manual_seed(seed)
    accepted = torch.randint(0, 4, (batch,), generator=generator).tolist()
    cache = CompactCache.for_model(model, context + 16, batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, context + 8), generator=generator).to(device)
    positions = torch.arange(context + 8, device=device).expand(batch, -1)
    model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=True, **cache_kwargs(model.get_decoder(),
                                                                                              cache))
    keeps = [(context, torch.arange(context, context + count)) for count in accepted]
    shift = [max(accepted) - count for count in accepted]  # what each row moves to end with the longest

    def compact():
        cache.set_row_lengths([context + 8] * batch)
        cache.compact_rows(keeps)

    def realign():
        for layer in cache.layers:
            for buffer in (layer.key_buffer, layer.value_buffer):
                for row, by in enumerate(shift):
                    if by:
                        buffer[row, :, by : context + 8] = buffer[row, :, : context + 8 - by].clone()

    times = {}
    for name, work in (("compact_ms", compact), ("realign_ms", realign)):
        runs = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            runs.append((time.perf_counter() - start) * 1000)
        times[name] = round(statistics.median(runs), 3)
    return dict(batch=batch, context=context, accepted=accepted, **times)


def plot(rows: list[dict], path: Path) -> Path | None:
    """Throughput against batch size, a line per method (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(row["method"] for row in rows):
        chosen = [row for row in rows if row["method"] == method]
        axes.plot([row["batch_size"] for row in chosen], [row["tokens_per_second"] for row in chosen], marker="o",
                  label=method)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("batch size (prompts per forward)")
    axes.set_ylabel("generated tokens / s (all rows)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run_batch_bench(args: BatchArgs, command: str) -> dict:
    """Load the model and prompts, measure (resumable), write the report, its figure and return the report."""
    output = Path(args.output)
    log = JsonlLog(output.with_suffix(".jsonl"))
    with OutputLock.beside(output, "--output"):
        if args.overwrite and log.path.exists():
            log.path.unlink()
        model, tokenizer = space.load_model(args.llm_dir, dtype=args.dtype,
                                            device=args.device)
        prompts = [first_turn_ids(tokenizer, prompt, "chat_template", model.config.model_type, model.device)[0]
                   for prompt in load_eval_dataset(args.dataset, num_samples=args.num_samples, execute=False)]
        records = measure(model, prompts, args, log)
        rows = summarize(records, chosen_methods(args), batch_sizes(args))
        context = int(sum(p.numel() for p in prompts) / len(prompts)) + args.max_new_tokens // 2
        upkeep = [cache_upkeep(model, size, context) for size in batch_sizes(args) if size > 1]
        report = dict(command=command, model=args.llm_dir or "the shipped SPACE model", dataset=args.dataset,
                      prompts=len(prompts), max_new_tokens=args.max_new_tokens, mask_num=args.mask_num,
                      provenance=provenance(model.device), rows=rows, cache_upkeep=upkeep)
        write_atomic(output, json.dumps(report, indent=2))
        figure = plot(rows, output.with_suffix(".png"))
        report["figure"] = None if figure is None else str(figure)
    return report


def batch_table(rows: list[dict]) -> str:
    """The report's rows as a markdown table (as quoted in docs/benchmarks.md)."""
    return markdown_table(rows, COLUMNS, HEADERS)


def upkeep_table(upkeep: list[dict]) -> str:
    """The cache-upkeep measurement as a markdown table."""
    return markdown_table(upkeep, ["batch", "context", "compact_ms", "realign_ms"],
                          ["batch", "entries per row", "keep in place (ms)", "realign (ms)"])
