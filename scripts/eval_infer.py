"""Evaluate decoding methods on the same prompts: speedup, tokens per step, identity and quality.

Takes the original SPACE eval flags with their meanings (`--llm_dir --mask_id --dataset --mask_num
--do_sample --use_cache --model_type --mask_diff --save_data`, booleans as `true/false`) plus the
toolkit's own. Every method answers every prompt in the same process and model; see
`space.eval.harness` for how timing is kept fair. Outputs in `--output_dir`:

* `samples.jsonl`: one line per answer (prompt, turn, method, text, ids, seconds, tokens per step,
  and `passed` / `rouge_l` where quality is measured);
* `summary.json`, `summary.md` (the table printed at the end) and `summary.png` (figure);
* with `--save_data true`, the original per-step and per-sample CSVs (`token_dict.csv`, `res_dict.csv`).

Interrupted runs keep finished prompts; the same command resumes.

    python scripts/eval_infer.py --dataset human_eval --methods space,ar,hf,prompt_lookup --num_samples 20
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run, str2bool  # noqa: E402
from space.eval import execution, harness, report  # noqa: E402
from space.eval.datasets import dataset_names, default_max_new_tokens, load_eval_dataset  # noqa: E402
from space.eval.divergence import explain, near_tie_threshold  # noqa: E402
from space.eval.metrics import split_label, summarize  # noqa: E402
from space.eval.prompts import MODEL_TYPES  # noqa: E402
from space.eval.rouge import rouge_l  # noqa: E402
from space.models import BASE_MODEL_ALIASES  # noqa: E402
from space.skip_layers import check_skippable, load_skip_file, select_entry  # noqa: E402
from space.tokens import resolve_mask_spec, resolve_sat_spec  # noqa: E402

SPECULATIVE_OPTIONS = {"space": ("mask_num", "mask_id", "mask_diff", "sampling_mode"),
                       "self_spec": ("max_draft", "draft_threshold"),
                       "sdsat": ("sat_num", "sat_id", "sampling_mode")}
VARIANT_OPTION = {"space": "mask_num", "sdsat": "sat_num"}  # `space@K` / `sdsat@K`: k sweeps
DEFAULT_SKIP_LAYERS = Path(__file__).resolve().parents[1] / "configs" / "self_spec" / "skip_layers.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    original = parser.add_argument_group("original SPACE flags")
    original.add_argument("--llm_dir", default=None, help="model dir, hub name or .gguf (default: the embedded model)")
    original.add_argument("--mask_id", type=int, default=None, help="default: the model config")
    original.add_argument("--dataset", default="human_eval", help=f"one of {', '.join(dataset_names())}")
    original.add_argument("--mask_num", type=int, default=None, help="k (default: the model config)")
    original.add_argument("--do_sample", type=str2bool, default=False)
    original.add_argument("--use_cache", type=str2bool, default=True, help="KV cache for every method (original default: false)")
    original.add_argument("--model_type", default="llama", choices=MODEL_TYPES, help="selects the original prompt string")
    original.add_argument("--mask_diff", type=str2bool, default=None, help="default: the model config")
    original.add_argument("--save_data", type=str2bool, default=True, help="per-step statistics, histogram, repetition filter, CSVs")
    extra = parser.add_argument_group("toolkit flags")
    extra.add_argument("--methods", default="space,ar,hf,prompt_lookup",
                       help=f"comma list of {sorted(space.DECODERS)}; `space@K` / `sdsat@K` run with k = K (k sweeps)")
    extra.add_argument("--num_samples", type=int, default=None, help="first N prompts (default: all)")
    extra.add_argument("--max_new_tokens", type=int, default=None, help="default: the original's per dataset")
    extra.add_argument("--output_dir", default=None, help="default: outputs/eval/<dataset>")
    extra.add_argument("--overwrite", action="store_true", help="replace a run with a different configuration")
    extra.add_argument("--data_path", default=None, help="local file or hub name for non-vendored datasets")
    extra.add_argument("--prompt_style", default="auto", choices=["auto", "original", "chat_template"],
                       help="auto: chat_template for the embedded model, original (--model_type) otherwise")
    extra.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds of every method")
    extra.add_argument("--seed", type=int, default=0)
    extra.add_argument("--temperature", type=float, default=1.0)
    extra.add_argument("--top_p", type=float, default=1.0)
    extra.add_argument("--top_k", type=int, default=0)
    extra.add_argument("--sampling_mode", default="exact", choices=["exact", "original"])
    extra.add_argument("--skip_layers", default=str(DEFAULT_SKIP_LAYERS),
                       help="self_spec: skip_layers.json (scripts/search_skip_layers.py writes one)")
    extra.add_argument("--skip_layers_key", default=None,
                       help="self_spec: entry of --skip_layers (default: the model's name, or the file's only entry)")
    extra.add_argument("--max_draft", type=int, default=None, help="self_spec: drafts per round at most (default 8)")
    extra.add_argument("--draft_threshold", type=float, default=None,
                       help="self_spec: initial confidence threshold γ (default 0.8 greedy, 0.5 sampling)")
    extra.add_argument("--sat_num", type=int, default=None, help="sdsat: adaptive tokens per draft step k (default: the model config)")
    extra.add_argument("--sat_id", type=int, default=None,
                       help="sdsat: adaptive token id (default: the model config; 32011 for the released CodeLlama SDSAT models)")
    extra.add_argument("--dtype", default="float32")
    extra.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    extra.add_argument("--adapter", default=None, help="peft adapter directory on top of --llm_dir")
    extra.add_argument("--pass_at_k", type=str2bool, default=True, help="execute generated code (HumanEval datasets)")
    extra.add_argument("--exec_timeout", type=float, default=10.0, help="seconds per executed program")
    extra.add_argument("--progress", type=str2bool, default=True)
    extra.add_argument("--time_limit", type=float, default=None,
                       help="seconds: start no new prompt after this, summarize the finished ones (resume later)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if not _valid_label(m)]
    if unknown or not methods:
        raise space.SpaceError(f"unknown method(s) {unknown} in --methods; available: {sorted(space.DECODERS)}")
    prompts = load_eval_dataset(args.dataset, args.data_path, args.num_samples)
    max_new_tokens = args.max_new_tokens or default_max_new_tokens(args.dataset)

    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=args.device)
    note = " ".join(filter(None, [prepare_masks(model, tokenizer, args, methods),
                                  prepare_sats(model, tokenizer, args, methods)])) or None
    skip_layers = prepare_skip_layers(model, args, methods)
    style = args.prompt_style if args.prompt_style != "auto" else ("chat_template" if is_embedded(args.llm_dir) else "original")
    options = method_options(args, methods, max_new_tokens, skip_layers)
    config = dict(llm_dir=args.llm_dir, adapter=args.adapter, dataset=args.dataset, data_path=args.data_path,
                  methods=methods, options=options, prompt_style=style, model_type=args.model_type, dtype=args.dtype,
                  device=str(model.device), num_samples=args.num_samples)
    store = harness.ResultStore(args.output_dir or f"outputs/eval/{args.dataset}", config, overwrite=args.overwrite)
    if note:
        print(note, file=sys.stderr)

    if args.warmup:
        harness.warm_up(model, tokenizer, prompts[0], methods, options, style, args.model_type, args.warmup, model.device)
    stored = harness.run_prompts(model, tokenizer, prompts, methods, options, store, style, args.model_type,
                                 progress=args.progress, time_limit=args.time_limit)
    complete = harness.complete_ids(stored, prompts, methods)
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
        summary["partial"] = (f"stopped by --time_limit: {len(prompts)} of {requested} prompts answered by every "
                              "method; the same command resumes")
        print(summary["partial"], file=sys.stderr)
    summary["versions"] = report.versions()
    if not args.do_sample and "ar" in methods:
        summary["divergences"] = explain_divergences(model, tokenizer, records, prompts, style, args.model_type)
    write_outputs(store.dir, summary, records, args.save_data)
    print(report.summary_table(summary))
    print(f"\nresults: {store.dir}/summary.json, summary.md, summary.png, samples.jsonl")
    return summary


def _valid_label(label: str) -> bool:
    """A decoder name, or `space@K` / `sdsat@K`."""
    name, k = split_label(label)
    return name in space.DECODERS and (k is None or name in VARIANT_OPTION)


def prepare_masks(model, tokenizer, args, methods) -> str | None:
    """Check SPACE can run before any timing; give the embedded base model untrained masks if needed."""
    if not any(harness.decoder_name(m) == "space" for m in methods):
        return None
    note = None
    if space.read_mask_spec(model.config) is None and is_embedded(args.llm_dir) and args.mask_id is None:
        space.add_mask_tokens(model, tokenizer, mask_num=args.mask_num or 3)
        note = ("note: the embedded SmolLM2-135M-Instruct has no trained mask tokens here; untrained ones were added, "
                "so SPACE output equals AR but few drafts are accepted")
    resolve_mask_spec(model.config, args.mask_id, args.mask_num, args.mask_diff)  # one clear error if unusable
    return note


def prepare_sats(model, tokenizer, args, methods) -> str | None:
    """Check SDSAT can run before any timing; give the embedded model an untrained adaptive token if needed."""
    if not any(harness.decoder_name(m) == "sdsat" for m in methods):
        return None
    note = None
    if space.read_sat_spec(model.config) is None and is_embedded(args.llm_dir) and args.sat_id is None:
        space.add_sat_tokens(model, tokenizer, sat_num=args.sat_num or 5)
        note = ("note: the embedded model has no trained SDSAT adaptive token here; an untrained one was added, "
                "so SDSAT output equals AR but few drafts are accepted")
    resolve_sat_spec(model.config, args.sat_id, args.sat_num)  # one clear error if unusable
    return note


def prepare_skip_layers(model, args, methods) -> dict | None:
    """self_spec's skip set, chosen from --skip_layers and checked against the model before any timing."""
    if not any(harness.decoder_name(m) == "self_spec" for m in methods):
        return None
    check_skippable(model)
    entries = load_skip_file(args.skip_layers)
    _, skip = select_entry(entries, model, args.skip_layers_key, source=f"--skip_layers {args.skip_layers}")
    return skip.to_dict()


def method_options(args, methods: list[str], max_new_tokens: int, skip_layers: dict | None = None) -> dict[str, dict]:
    common = dict(max_new_tokens=max_new_tokens, use_cache=args.use_cache, do_sample=args.do_sample,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    options = {}
    for method in methods:
        options[method] = dict(common)
        for name in SPECULATIVE_OPTIONS.get(harness.decoder_name(method), ()):
            value = getattr(args, name)
            if value is not None:
                options[method][name] = value
        if harness.decoder_name(method) == "self_spec":
            options[method]["skip_layers"] = skip_layers
        name, k = split_label(method)
        if k is not None:  # space@K, sdsat@K
            options[method][VARIANT_OPTION[name]] = k
    return options


def is_embedded(llm_dir: str | None) -> bool:
    return llm_dir is None or llm_dir.lower() in BASE_MODEL_ALIASES


def add_quality(records: list[dict], prompts, args) -> None:
    """pass@1 for code datasets (executed in a sandbox), ROUGE-L for summaries."""
    by_id = {p.id: p for p in prompts}
    for record in records:
        prompt = by_id[record["id"]]
        if prompt.problem is not None and args.pass_at_k and record["turn"] == 0:
            if "passed" not in record:
                result = execution.check_completion(prompt.problem, record["text"], prompt.language, timeout=args.exec_timeout)
                record["passed"] = None if result.status == "skipped" else result.passed
                record["exec_status"] = result.status
        if prompt.reference is not None:
            record["rouge_l"] = round(rouge_l(record["text"], prompt.reference), 4)


def finish_summary(summary: dict, records: list[dict], args, methods, num_prompts: int, note, style) -> None:
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
            + report.markdown_table(rows, ["id", "method", "position", "ar_token", "method_token", "logit_gap",
                                           "near_tie_threshold", "near_tie"])
            + "\n")


def write_outputs(directory: Path, summary: dict, records: list[dict], save_data: bool) -> None:
    if not save_data:
        summary["original"] = {name: {k: v for k, v in values.items() if k in ("time_percentage", "speedup_sum", "speedup_avg")}
                               for name, values in summary["original"].items()}
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    partial = f"\n{summary['partial']}\n" if summary.get("partial") else ""
    (directory / "summary.md").write_text(f"# {summary['dataset']}: {summary['num_samples']} prompts\n{partial}\n"
                                          + report.summary_table(summary) + "\n" + divergence_table(summary))
    report.draw_figure(summary, directory / "summary.png")
    if save_data:
        with (directory / "token_dict.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["idx", "turn", "method", "step", "tokens"])
            for r in records:
                for step, emitted in enumerate(r["tokens_per_step"]):
                    writer.writerow([r["id"], r["turn"], r["method"], step, emitted])
        with (directory / "res_dict.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["idx", "turn", "method", "infer_time", "new_tokens", "steps", "passed", "content"])
            for r in records:
                writer.writerow([r["id"], r["turn"], r["method"], r["seconds"], len(r["ids"]), r["steps"],
                                 r.get("passed"), r["text"]])


if __name__ == "__main__":
    run(main)
