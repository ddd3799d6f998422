"""A quality-only run: one model's greedy answers decoded in batches, then pass@1 / ROUGE-L.

`space.eval.evaluate` times every method. A question such as "what is this model's pass@1 in five languages"
needs no timing: `evaluate_quality(args)` answers the prompts with lossless batched decoding
(`space.decode_batch`, `batch_size` prompts at once with continuous batching, SPACE by default), shortest prompts
first, and scores them the way `evaluate` does (the same prompts, chat rendering, sandboxed execution and summary).

Every answer is exactly `space.decode(..., "ar")`'s for its prompt (greedy, fp32): the batched rows are each their
own batch-1 output, so this pass@1 is the model's, and the pass@1 of every lossless method.

The run directory is an ordinary results store (`space.eval.results`): resumable chunk by chunk (`CHUNK` batches
of prompts per call), a rerun with other settings refused, one method label `greedy_batched` in `samples.jsonl`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

import space
from space.cli import parse_flags
from space.decoding import batching_methods
from space.decoding import prepare as prepare_method
from space.errors import SpaceError
from space.eval import results
from space.eval.datasets import default_max_new_tokens, load_eval_dataset
from space.eval.flags import _flag, check_run_bounds
from space.eval.harness import first_turn_ids
from space.eval.pipeline import add_quality, check_execution, is_embedded, prompt_style, run_config
from space.eval.ranks import Ranks, ShardedRun, load_agreed, per_rank, process_group
from space.io import provenance, versions, write_atomic, write_json
from space.models import model_dtype

METHOD = "greedy_batched"
CHUNK = 4  # batches of prompts per decode_batch call: the store keeps each chunk as soon as it is answered


@dataclass
class QualityArgs:
    """The flags of `scripts/eval_quality.py`: the evaluation's names and meanings, fewer of them."""

    dataset: str = _flag("human_eval", "a dataset of scripts/eval_infer.py (single-turn prompts)")
    llm_dir: str | None = _flag(None, "model dir, hub name or .gguf (default: the embedded model)")
    adapter: str | None = _flag(None, "peft adapter directory on top of --llm_dir")
    num_samples: int | None = _flag(None, "first N prompts (default: all)")
    max_new_tokens: int | None = _flag(None, "default: the original's per dataset")
    batch_size: int = _flag(16, "prompts decoded at once")
    method: str | None = _flag(None, "the lossless decoder that answers (space or ar; the answers are AR's either way; "
                                     "default: space when the model has mask tokens or is the embedded one, else ar)")
    output_dir: str | None = _flag(None, "default: outputs/quality/<dataset>")
    overwrite: bool = _flag(False, "replace the files of a run with other settings in --output_dir")
    data_path: str | None = _flag(None, "local file or hub name for non-vendored datasets")
    prompt_style: str = _flag("auto", "auto: chat_template for the embedded model, original (--model_type) otherwise",
                              choices=["auto", "original", "chat_template"])
    model_type: str = _flag("llama", "selects the original prompt string")
    dtype: str = _flag("auto", "float32, bfloat16, float16 or auto")
    device: str = _flag("cpu", "cpu, cuda or auto")
    pass_at_k: bool = _flag(True, "execute generated code (HumanEval datasets)")
    exec_timeout: float = _flag(10.0, "seconds per executed program")
    unsafe_execution: bool = _flag(False, "run generated code WITHOUT the bubblewrap sandbox (your rights; warns)")
    progress: bool = _flag(True)


def parse_quality_args(argv: list[str] | None = None, description: str | None = None) -> QualityArgs:
    """`argv` (default: the command line) -> `QualityArgs`; a bad flag is one `SpaceError` line."""
    (args,) = parse_flags((QualityArgs,), argv, "eval_quality.py", description, show_defaults=False)
    check_method(args)
    return args


def check_method(args: QualityArgs) -> None:
    if args.method is not None and args.method not in batching_methods():
        raise SpaceError(f"--method must be one of {batching_methods()}, the lossless decoders that batch "
                         f"(got {args.method!r})")


def evaluate_quality(args: QualityArgs) -> dict:
    """Answer every prompt of `args.dataset` in batches, score the answers; returns the summary."""
    check_run_bounds(args)
    check_method(args)
    prompts = load_eval_dataset(args.dataset, args.data_path, args.num_samples, execute=args.pass_at_k)
    if any(len(p.turns) > 1 for p in prompts):
        raise SpaceError(f"{args.dataset} has multi-turn prompts; a batched quality run answers single-turn "
                         "prompts only (use scripts/eval_infer.py --methods ar)")
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else default_max_new_tokens(args.dataset)
    directory = args.output_dir or f"outputs/quality/{args.dataset}"
    ranks = Ranks.from_env()
    if ranks.main:
        results.check_output_dir(directory)
    check_execution(args, prompts)
    with process_group(ranks):
        model, tokenizer = load_agreed(ranks, args)
        args = replace(args, dtype=model_dtype(model))  # `auto` recorded as what it chose
        style = prompt_style(args)
        method = args.method or ("space" if is_embedded(args.llm_dir) or space.read_mask_spec(model.config) else "ar")
        note = prepare_method(method, model, tokenizer, [dict(max_new_tokens=max_new_tokens)],
                              untrained=is_embedded(args.llm_dir))
        if note and ranks.main:
            print(note, file=sys.stderr)
        config = run_config(args, [METHOD], {METHOD: dict(max_new_tokens=max_new_tokens, batch_size=args.batch_size,
                                                          decoder=method)}, style, model)
        with ShardedRun(ranks, directory, config, overwrite=args.overwrite) as run:
            done = run.store.done_ids(prompts, [METHOD])
            answer_in_batches(model, tokenizer, [p for p in run.shard(prompts, [METHOD]) if p.id not in done],
                              run.store, style, args.model_type, max_new_tokens, args.batch_size, method,
                              args.progress, should_stop=run.should_stop,
                              rank=ranks.recorded)
            if ranks.world > 1:  # each rank executes its own answers' programs
                add_quality(run.store.new, prompts, args)
            records = run.collect()
            if not ranks.main:
                return run.finish()
            add_quality(records, prompts, args)
            run.main_store.rewrite(records)
            summary = dict(methods={METHOD: quality_fields(records)},
                           categories={category: quality_fields([r for r in records if r.get("category") == category])
                                       for category in sorted({r["category"] for r in records if r.get("category")})})
            summary.update(dataset=args.dataset, num_samples=len(prompts), prompt_style=style,
                           settings=dict(do_sample=False, batch_size=args.batch_size, decoder=method,
                                         max_new_tokens=max_new_tokens,
                                         dtype=args.dtype, model=args.llm_dir or "embedded SmolLM2-135M-Instruct",
                                         adapter=args.adapter),
                           note="lossless batched greedy answers (each AR's own): a quality run, no speed is measured",
                           versions=versions(), provenance=provenance(model.device))
            shares = per_rank(records)  # untimed answers: each rank's prompts
            if shares:
                summary["ranks"] = shares
            write_json(run.main_store.dir / "summary.json", summary)
            write_atomic(run.main_store.dir / "summary.md", quality_table(summary))
            return run.finish(summary)


def quality_fields(records: list[dict]) -> dict:
    """What a quality run measures: answers, their length and quality (no speed: a batch shares its time)."""
    executed = [r["passed"] for r in records if r.get("passed") is not None]
    scores = [r["rouge_l"] for r in records if "rouge_l" in r]
    tokens = sum(len(r["ids"]) for r in records)
    return {"answers": len(records), "total_tokens": tokens,
            "mean_answer_tokens": round(tokens / len(records), 1) if records else None,
            "executed": len(executed), "solved": sum(bool(p) for p in executed),
            "pass@1": round(sum(executed) / len(executed), 4) if executed else None,
            "rouge_l": round(sum(scores) / len(scores), 4) if scores else None}


def quality_table(summary: dict) -> str:
    """summary.md: one markdown row for the run and one per category."""
    rows = [("all", summary["methods"][METHOD]), *summary["categories"].items()]
    lines = [f"# {summary['dataset']}: {summary['num_samples']} prompts, batched greedy answers\n",
             "| prompts | answers | solved | pass@1 | ROUGE-L | mean answer tokens |", "|---|---|---|---|---|---|"]
    for name, fields in rows:
        cells = [fields["answers"], f"{fields['solved']}/{fields['executed']}" if fields["executed"] else "-",
                 "-" if fields["pass@1"] is None else fields["pass@1"],
                 "-" if fields["rouge_l"] is None else fields["rouge_l"], fields["mean_answer_tokens"]]
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def answer_in_batches(model, tokenizer, prompts, store, style: str, model_type: str, max_new_tokens: int,
                      batch_size: int, method: str = "space", progress: bool = True, should_stop=None,
                      rank: int | None = None) -> None:
    """Greedy answers to `prompts` (first turns), `batch_size` decoding at once, stored chunk by chunk; before
    each chunk, `should_stop()` may end it (another rank failed); `rank` is recorded in every answer."""
    device = model.get_input_embeddings().weight.device
    encoded = [(p, first_turn_ids(tokenizer, p, style, model_type, device)[0]) for p in prompts]
    encoded.sort(key=lambda item: len(item[1]))  # similar lengths together: less padding
    bar = tqdm(total=len(encoded), desc="answering", disable=not progress, unit="prompt")
    chunk = CHUNK * batch_size
    for start in range(0, len(encoded), chunk):
        if should_stop and should_stop():
            break
        part = encoded[start:start + chunk]
        answers = space.decode_batch(model, [ids for _, ids in part], method, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens)
        for (prompt, ids), answer in zip(part, answers):
            tokens = answer.tokens.tolist()
            store.add_prompt(prompt.id, [dict(id=prompt.id, turn=0, method=METHOD, category=prompt.category,
                                              text=tokenizer.decode(tokens, skip_special_tokens=True), ids=tokens,
                                              prompt_tokens=len(ids), **({} if rank is None else {"rank": rank}))])
        bar.update(len(part))
    bar.close()
