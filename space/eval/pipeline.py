"""The evaluation end to end: `evaluate(args) -> summary`, what `scripts/eval_infer.py` runs.

Every method answers every prompt in the same process and model (`space.eval.harness` keeps the
timing fair and the run resumable). Steps: parse the method labels (`space@K` / `sdsat@K` run with
k = K), load the prompts and the model, build each method's options, run each method's preparation step
before any timing (`space.decoding.prepare`: draft tokens, skip sets), run, add quality (pass@1 by
execution, ROUGE-L), summarize, explain greedy answers that differ from AR, write the outputs.

Outputs in `args.output_dir` (default `outputs/eval/<dataset>`), the only files a run writes, replaces or
deletes there (`results.RUN_FILES`; the directory and anything else in it are left alone):

* `run_config.json`: the settings the answers depend on (a rerun with other ones is refused, or with
  `--overwrite` replaces these files); `eval.lock` is held while a run lasts;
* `samples.jsonl`: one line per answer (prompt, turn, method, text, ids, seconds, tokens per step,
  and `passed` / `rouge_l` where quality is measured);
* `summary.json`, `summary.md` (the table, and one per category where prompts have one) and `summary.png`
  (figure);
* with `save_data`, the original per-step and per-sample CSVs (`token_dict.csv`, `res_dict.csv`).
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import replace
from pathlib import Path
from statistics import mean

import space
from space.decoding import option_names, parse_options, prepare
from space.eval import harness, report, results, spec_bench
from space.eval.code import check_completion, check_isolation
from space.eval.datasets import default_max_new_tokens, load_eval_dataset
from space.eval.divergence import explain, near_tie_threshold
from space.eval.flags import EvalArgs, check_eval_args
from space.eval.metrics import split_label, summarize
from space.eval.ranks import Ranks, ShardedRun, load_agreed, per_rank, process_group
from space.eval.rouge import rouge_l
from space.io import markdown_table, provenance, versions, write_atomic, write_json, writing
from space.models import BASE_MODEL_ALIASES, model_dtype

# The flag a `space@K` / `sdsat@K` label sets; every other option comes from the flag of the same name
# (`method_options`, driven by each decoder's Options class).
VARIANT_OPTION = {"space": "mask_num", "sdsat": "sat_num"}  # `space@K` / `sdsat@K`: k sweeps
SPEC_BENCH_FILES = "spec_bench-{method}.jsonl"  # --answer_format spec-bench without --answer_file


def evaluate(args: EvalArgs) -> dict:
    """Run the evaluation `args` describes; returns the summary (also written to summary.json). Under a launcher
    with several ranks (`space.eval.ranks`), every rank answers its shard and every rank returns the summary rank 0
    wrote."""
    check_eval_args(args)
    ranks = Ranks.from_env()
    methods = parse_methods(args.methods)
    prompts = load_eval_dataset(args.dataset, args.data_path, args.num_samples, execute=args.pass_at_k)
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else default_max_new_tokens(args.dataset)
    if ranks.main:
        results.check_output_dir(output_dir(args))  # a file, a foreign directory or a run in use: before the model

    options = method_options(args, methods, max_new_tokens)
    for method, chosen in options.items():  # a bad option is refused before the model loads or a setting is stored
        parse_options(split_label(method)[0], chosen)
    check_execution(args, prompts)  # before hours of decoding: one clear error if programs cannot be isolated
    with process_group(ranks):
        model, tokenizer = load_agreed(ranks, args)
        args = replace(args, dtype=model_dtype(model))  # `auto` recorded as what it chose: a resume compares dtypes
        style = prompt_style(args)
        note = prepare_methods(model, tokenizer, methods, options, untrained=is_embedded(args.llm_dir))
        with ShardedRun(ranks, output_dir(args), run_config(args, methods, options, style, model),
                        overwrite=args.overwrite) as run:  # rank 0 holds the run's lock until the outputs are written
            if note and ranks.main:
                print(note, file=sys.stderr)
            if args.warmup:
                harness.warm_up(model, tokenizer, prompts[0], methods, options, style, args.model_type, args.warmup,
                                model.device)
            harness.run_prompts(model, tokenizer, run.shard(prompts, methods), methods, options, run.store, style,
                                args.model_type, progress=args.progress, time_limit=args.time_limit,
                                carry_state=args.carry_state, batch_size=args.batch_size,
                                should_stop=run.should_stop, rank=ranks.recorded)
            if ranks.world > 1:  # each rank executes its own answers' programs: rank 0 alone would take as long
                add_quality(run.store.new, prompts, args)
            stored = run.collect()
            if not ranks.main:
                return run.finish()
            return run.finish(summarize_run(model, tokenizer, stored, prompts, methods, options, args, note, style,
                                            run.main_store))


def summarize_run(model, tokenizer, stored: list[dict], prompts, methods: list[str], options: dict, args: EvalArgs,
                  note: str | None, style: str, store: results.ResultStore) -> dict:
    """Quality, summary and outputs of the prompts every method answered (`stored`: every answer of the run)."""
    complete = results.complete_ids(stored, prompts, methods)
    requested = len(prompts)
    prompts = [p for p in prompts if p.id in complete]  # a stopped run reports only fully answered prompts
    if not prompts:
        raise space.SpaceError(f"no prompt was answered by every method within --time_limit {args.time_limit}s; "
                               "raise it (answers so far are kept and the same command resumes)")
    records = [r for r in stored if r["id"] in complete]
    add_quality(records, prompts, args)
    store.rewrite(stored)  # unfinished prompts keep their answers for the resume

    spec = space.read_mask_spec(model.config)
    summary = summarize(records, count_tokens=lambda text: len(tokenizer.encode(text)) + 1,
                        mask_num=options.get("space", {}).get("mask_num") or (spec.mask_num if spec else None))
    finish_summary(summary, records, args, methods, len(prompts), note, style)
    if len(prompts) < requested:
        summary["partial"] = (f"stopped by --time_limit: {len(prompts)} of {requested} prompts answered by "
                              "every method; the same command resumes")
        print(summary["partial"], file=sys.stderr)
    throughput = per_rank(records)
    if throughput:
        summary["ranks"] = throughput
    summary["versions"] = versions()
    summary["provenance"] = provenance(model.device)
    if not args.do_sample and "ar" in methods:
        summary["divergences"] = explain_divergences(model, tokenizer, records, prompts, style, args.model_type)
    if args.answer_format == "spec-bench":
        written = spec_bench.write_answer_files(records, methods, args.answer_file or store.dir / SPEC_BENCH_FILES,
                                                args.model_id or spec_bench.default_model_id(args.llm_dir),
                                                args.dataset)
        summary["answer_files"] = [str(path) for path in written]
    write_outputs(store.dir, summary, records, args.save_data)
    return summary


def run_config(args: EvalArgs, methods: list[str], options: dict[str, dict], style: str, model) -> dict:
    """The settings a run's answers depend on (run_config.json): a rerun with other ones is refused, not mixed.
    `num_samples` only extends a run; `quality` (how pass@1 runs) only re-measures the kept answers. A quality run
    (`space.eval.quality`, no carried state) records the same but `carry_state`."""
    config = dict(llm_dir=args.llm_dir, adapter=args.adapter, dataset=args.dataset, data_path=args.data_path,
                  methods=methods, options=options, prompt_style=style, model_type=args.model_type, dtype=args.dtype,
                  device=str(model.device), num_samples=args.num_samples,
                  quality=dict(pass_at_k=args.pass_at_k, exec_timeout=args.exec_timeout,
                               unsafe_execution=args.unsafe_execution))
    if isinstance(args, EvalArgs):
        config["carry_state"] = args.carry_state
        config["batch_size"] = args.batch_size  # batched timings are not mixed with one-prompt ones
    return config


def output_dir(args: EvalArgs) -> Path:
    return Path(args.output_dir or f"outputs/eval/{args.dataset}")


def parse_methods(methods: str) -> list[str]:
    """`--methods` -> method labels: decoder names, or `space@K` / `sdsat@K`."""
    labels = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in labels if not _valid_label(m)]
    if unknown or not labels:
        raise space.SpaceError(f"unknown method(s) {unknown} in --methods; available: {sorted(space.DECODERS)}")
    repeated = sorted({m for m in labels if labels.count(m) > 1})
    if repeated:  # a second copy would answer with the first one's answers as history, and merge in the summary
        raise space.SpaceError(f"--methods names {', '.join(repeated)} more than once; name each method once")
    return labels


def _valid_label(label: str) -> bool:
    name, k = split_label(label)
    return name in space.DECODERS and (k is None or name in VARIANT_OPTION)


def prepare_methods(model, tokenizer, methods: list[str], options: dict[str, dict], untrained: bool) -> str | None:
    """Each method's preparation step (`space.decoding.prepare`: draft tokens, skip sets) on the options of all its
    labels, before any timing; the notes they return, joined."""
    notes = []
    for name in space.DECODERS:
        labels = [label for label in methods if harness.decoder_name(label) == name]
        if labels:
            notes.append(prepare(name, model, tokenizer, [options[label] for label in labels], untrained))
    return " ".join(filter(None, notes)) or None


def method_options(args: EvalArgs, methods: list[str], max_new_tokens: int) -> dict[str, dict]:
    """Per method label, the keyword options `space.decode` gets: every flag named like one of the method's
    options (`space.decoding.option_names`; unset ones keep the method's default) and the `@K` of a k sweep.
    A method's preparation step may resolve some of them once (self_spec's skip-set file: `prepare_methods`)."""
    options = {}
    for method in methods:
        name, k = split_label(method)
        taken = option_names(name)
        chosen = {option: getattr(args, option) for option in taken if getattr(args, option, None) is not None}
        chosen["max_new_tokens"] = max_new_tokens
        if k is not None:  # space@K, sdsat@K
            chosen[VARIANT_OPTION[name]] = k
        options[method] = chosen
    return options


def prompt_style(args) -> str:
    """`--prompt_style`, with `auto` resolved: the chat template for the embedded model, the original string
    otherwise."""
    if args.prompt_style != "auto":
        return args.prompt_style
    return "chat_template" if is_embedded(args.llm_dir) else "original"


def is_embedded(llm_dir: str | None) -> bool:
    return llm_dir is None or llm_dir.lower() in BASE_MODEL_ALIASES


def check_execution(args: EvalArgs, prompts) -> None:
    """pass@k runs generated code: isolated (one clear error now if that cannot be set up here), or with the
    user's rights only after --unsafe_execution true, which warns."""
    if not args.pass_at_k or not any(p.problem is not None for p in prompts):
        return
    if args.unsafe_execution:
        print("warning: --unsafe_execution true: generated programs run WITHOUT isolation, with your rights "
              "(they can delete or send your files, reach the network and leave processes behind)", file=sys.stderr)
    else:
        check_isolation()


def add_quality(records: list[dict], prompts, args: EvalArgs) -> None:
    """pass@1 for code datasets (executed in a sandbox), ROUGE-L for summaries. An answer text that another method
    gave to the same problem (greedy lossless methods all give AR's) is executed once."""
    by_id = {p.id: p for p in prompts}
    executed = {}
    for record in records:
        prompt = by_id[record["id"]]
        if prompt.problem is not None and args.pass_at_k and record["turn"] == 0:
            if "passed" not in record:
                key = (record["id"], record["text"])
                if key not in executed:
                    executed[key] = check_completion(prompt.problem, record["text"], prompt.language,
                                                     timeout=args.exec_timeout, isolate=not args.unsafe_execution)
                result = executed[key]
                record["passed"] = None if result.status == "skipped" else result.passed
                record["exec_status"] = result.status
        if prompt.reference is not None:
            record["rouge_l"] = round(rouge_l(record["text"], prompt.reference), 4)


def finish_summary(summary: dict, records: list[dict], args: EvalArgs, methods: list[str], num_prompts: int,
                   note: str | None, style: str) -> None:
    summary.update(dataset=args.dataset, num_samples=num_prompts, prompt_style=style,
                   settings=dict(do_sample=args.do_sample, use_cache=args.use_cache, dtype=args.dtype,
                                 model=args.llm_dir or "embedded SmolLM2-135M-Instruct", adapter=args.adapter),
                   note=note)
    for name in methods:
        rows = [r for r in records if r["method"] == name]
        executed = [r["passed"] for r in rows if r.get("passed") is not None]
        summary["methods"][name]["pass@1"] = round(mean(executed), 4) if executed else None
        scores = [r["rouge_l"] for r in rows if "rouge_l" in r]
        summary["methods"][name]["rouge_l"] = round(mean(scores), 4) if scores else None
        if args.do_sample:
            summary["methods"][name]["identity_rate"] = None  # sampled outputs are not expected to match
    skipped = {r["exec_status"] for r in records if r.get("exec_status") == "skipped"}
    if skipped:
        summary["quality_note"] = "code execution skipped: toolchain not found"


def explain_divergences(model, tokenizer, records: list[dict], prompts, style: str, model_type: str) -> list[dict]:
    """For every greedy answer that differs from AR's: the first differing step and AR's logit gap there."""
    reference = {(r["id"], r["turn"]): r["ids"] for r in records if r["method"] == "ar"}
    by_id = {p.id: p for p in prompts}
    found = []
    for record in records:
        ar_ids = reference.get((record["id"], record["turn"]))
        if record["method"] == "ar" or ar_ids is None or record["ids"] == ar_ids:
            continue
        entry = dict(id=record["id"], turn=record["turn"], method=record["method"])
        if record["turn"] == 0:  # later turns build on each method's own earlier answers
            prompt_ids = harness.first_turn_ids(tokenizer, by_id[record["id"]], style, model_type, model.device)
            entry.update(explain(model, prompt_ids, record["ids"], ar_ids))
        found.append(entry)
    if found:
        ties = sum(bool(e.get("near_tie")) for e in found)
        print(f"{len(found)} answer(s) differ from AR; {ties} of them at a near-tie "
              f"(|logit gap| < {near_tie_threshold(model.dtype):g}): "
              "see summary.json 'divergences'", file=sys.stderr)
    return found


def divergence_table(summary: dict) -> str:
    rows = summary.get("divergences") or []
    if not rows:
        return ""
    return (f"\n{len(rows)} answer(s) differ from AR; at the first differing step, AR's logit gap between its token "
            "and the method's (near-tie: below the dtype's threshold):\n\n"
            + markdown_table(rows, ["id", "method", "position", "ar_token", "method_token", "logit_gap",
                                           "near_tie_threshold", "near_tie"])
            + "\n")


def write_outputs(directory: Path, summary: dict, records: list[dict], save_data: bool) -> None:
    if not save_data:
        summary["original"] = {name: {k: v for k, v in values.items()
                                      if k in ("time_percentage", "speedup_sum", "speedup_avg")}
                               for name, values in summary["original"].items()}
    write_json(directory / "summary.json", summary)
    partial = f"\n{summary['partial']}\n" if summary.get("partial") else ""
    categories = report.category_table(summary)
    categories = f"\n## Per category\n\n{categories}\n" if categories else ""
    if summary.get("ranks"):
        columns = list(dict.fromkeys(key for row in summary["ranks"] for key in row))
        categories += f"\n## Per rank (each on its own device)\n\n{markdown_table(summary['ranks'], columns)}\n"
    write_atomic(directory / "summary.md", f"# {summary['dataset']}: {summary['num_samples']} prompts\n{partial}\n"
                 + report.summary_table(summary) + "\n" + categories + divergence_table(summary))
    with writing(directory / "summary.png"):
        report.draw_figure(summary, directory / "summary.png")
    if save_data:
        per_step = [[r["id"], r["turn"], r["method"], step, emitted]
                    for r in records for step, emitted in enumerate(r["tokens_per_step"])]
        write_atomic(directory / "token_dict.csv", _csv(["idx", "turn", "method", "step", "tokens"], per_step))
        per_answer = [[r["id"], r["turn"], r["method"], r["seconds"], len(r["ids"]), r["steps"], r.get("passed"),
                       r["text"]] for r in records]
        write_atomic(directory / "res_dict.csv", _csv(["idx", "turn", "method", "infer_time", "new_tokens", "steps",
                                                       "passed", "content"], per_answer))


def _csv(header: list[str], rows: list[list]) -> str:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()
