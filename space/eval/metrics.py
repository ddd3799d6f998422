"""Speed and acceptance metrics over harness records, pure functions.

A record is one answer: `{"id", "turn", "method", "ids", "text", "seconds", "steps",
"tokens_per_step", "category", ...}`. Token counts come from the generated ids, one definition for
every method. Two families:

* clean, per method: tokens/s (total tokens / total seconds), speedup against each baseline
  (ratio of tokens/s), mean tokens per step (tokens / target forwards), target forwards, and
  `identity_rate` (share of answers whose ids equal the AR answer's);
* the original's (docs/spec/SPACE.md §4.4), for one method against one baseline: `time_percentage`,
  `speedup_sum`, `speedup_avg`, avg tokens per step and the 1..k+1 histogram, with tokens counted
  the original way (`len(tokenizer.encode(text)) + 1`), and the same again on the answers that pass
  the repetition filter (word repetition ratio of the baseline's answer <= 3.5).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from statistics import mean

BASELINES = ("ar", "hf", "prompt_lookup")
REPETITION_LIMIT = 3.5
_WORD = re.compile(r"[\u4e00-\u9fff]|\w+", re.UNICODE)


def by_method(records: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for record in records:
        grouped[record["method"]].append(record)
    return dict(grouped)


def keyed(records: list[dict]) -> dict[tuple, dict]:
    return {(record["id"], record["turn"]): record for record in records}


def method_summary(records: list[dict]) -> dict:
    tokens = sum(len(r["ids"]) for r in records)
    seconds = sum(r["seconds"] for r in records)
    steps = sum(r["steps"] for r in records)
    histogram = Counter(n for r in records for n in r["tokens_per_step"])
    return dict(
        answers=len(records),
        total_tokens=tokens,
        total_seconds=round(seconds, 4),
        tokens_per_second=round(tokens / seconds, 3) if seconds else None,
        avg_tokens_per_step=round(tokens / steps, 4) if steps else None,
        target_forwards=steps,
        tokens_per_step_histogram={str(n): histogram[n] for n in sorted(histogram)},
        **tree_summary(records, steps),
        **batch_summary(records),
    )


def batch_summary(records: list[dict]) -> dict:
    """For answers decoded in batches (`--batch_size`): the mean rows per call and the mean time of a call, each
    row's latency (its `seconds` are its share of the call, so `tokens_per_second` is the total throughput), and
    for batched greedy AR the share of rows equal to the same prompt decoded alone."""
    batched = [r for r in records if "batch_seconds" in r]
    if not batched:
        return {}
    checked = [r["equals_batch1_ar"] for r in batched if "equals_batch1_ar" in r]
    return dict(mean_batch_size=round(sum(r["batch_size"] for r in batched) / len(batched), 2),
                mean_row_latency_seconds=round(sum(r["batch_seconds"] for r in batched) / len(batched), 4),
                **({"batch1_ar_identity_rate": round(sum(checked) / len(checked), 4)} if checked else {}))


def tree_summary(records: list[dict], steps: int) -> dict:
    """For a tree decoder (records with `rows_per_step`): the mean rows fed per step (the tree's width with its
    mask groups) and which branch proposed each accepted draft token; {} for other methods."""
    if not steps or not all("rows_per_step" in r for r in records):
        return {}
    accepted = sum(sum(r["accepted_per_step"]) for r in records)
    copied = sum(sum(r["copy_accepted_per_step"]) for r in records)
    runners_up = sum(sum(r["topk_accepted_per_step"]) for r in records)
    return dict(
        avg_rows_per_step=round(sum(sum(r["rows_per_step"]) for r in records) / steps, 3),
        accepted_per_step_by_branch={name: round(count / steps, 4) for name, count in
                                     [("chain", accepted - copied - runners_up), ("copy", copied),
                                      ("topk", runners_up)]},
    )


def identity_rate(records: list[dict], reference: list[dict]) -> float | None:
    """Share of answers whose ids equal the reference method's answer to the same prompt and turn."""
    ref = keyed(reference)
    pairs = [(r, ref[(r["id"], r["turn"])]) for r in records if (r["id"], r["turn"]) in ref]
    if not pairs:
        return None
    return round(sum(r["ids"] == other["ids"] for r, other in pairs) / len(pairs), 4)


def speedup(method: dict, baseline: dict) -> float | None:
    if not method.get("tokens_per_second") or not baseline.get("tokens_per_second"):
        return None
    return round(method["tokens_per_second"] / baseline["tokens_per_second"], 4)


def repetition_ratio(text: str) -> float:
    """Words / distinct words (the original segments with jieba; a regex split serves without it)."""
    try:
        import jieba

        words = [w for w in jieba.lcut(text) if w.strip()]
    except ImportError:
        words = _WORD.findall(text)
    return len(words) / (len(set(words)) + 1e-6)


def original_metrics(method: list[dict], baseline: list[dict], count_tokens, max_steps: int | None = None) -> dict:
    """The original's report for `method` against `baseline`, over the answers both have.

    `count_tokens(text)` is the original's token count, `len(tokenizer.encode(text)) + 1`.
    """
    ref = keyed(baseline)
    pairs = [(m, ref[(m["id"], m["turn"])]) for m in method if (m["id"], m["turn"]) in ref]
    report = _original(pairs, count_tokens, max_steps)
    kept = [(m, b) for m, b in pairs if repetition_ratio(b["text"]) <= REPETITION_LIMIT]
    report["filtered"] = _original(kept, count_tokens, max_steps) | {"kept": len(kept), "of": len(pairs)}
    return report


def _original(pairs: list[tuple[dict, dict]], count_tokens, max_steps: int | None) -> dict:
    if not pairs:
        return {}
    time_method = [m["seconds"] for m, _ in pairs]
    time_base = [b["seconds"] for _, b in pairs]
    tokens_method = [count_tokens(m["text"]) for m, _ in pairs]
    tokens_base = [count_tokens(b["text"]) for _, b in pairs]
    per_step = [n for m, _ in pairs for n in m["tokens_per_step"]]
    histogram = Counter(per_step)
    # 1..k+1 as the original lists them, and past k+1 where a step emitted more (a tree's copy runs on)
    top = max(max_steps or 0, max(histogram))
    return dict(
        time_percentage=round(mean(time_method) / mean(time_base), 4),
        speedup_sum=round((sum(tokens_method) / sum(time_method)) / (sum(tokens_base) / sum(time_base)), 4),
        speedup_avg=round(mean(t / s for t, s in zip(tokens_method, time_method))
                          / mean(t / s for t, s in zip(tokens_base, time_base)), 4),
        num_infer=len(per_step),
        num_tokens=sum(per_step),
        avg_num_of_tokens=round(sum(per_step) / len(per_step), 4),
        histogram={str(n): [histogram[n], round(histogram[n] / len(per_step), 4)] for n in range(1, top + 1)},
    )


def split_label(label: str) -> tuple[str, int | None]:
    """A method label is a decoder name with an optional k: `space@3` -> ("space", 3), `ar` -> ("ar", None).

    A suffix that is not a number is left in the name, so the label is refused as an unknown method.
    """
    name, _, k = label.partition("@")
    return (name, int(k)) if k.isdigit() else (label if k else name, None)


def _max_tokens_per_step(label: str, mask_num: int | None) -> int | None:
    """k+1 for SPACE (`space` uses the run's k, `space@K` its own K); None lets the data decide."""
    name, k = split_label(label)
    if name != "space":
        return None
    k = k if k is not None else mask_num
    return k + 1 if k else None


def summarize(records: list[dict], count_tokens=None, mask_num: int | None = None) -> dict:
    """Per-method clean metrics, speedups against every baseline present, and the original report."""
    grouped = by_method(records)
    summaries = {name: method_summary(rows) for name, rows in grouped.items()}
    for name, summary in summaries.items():
        for base in BASELINES:
            if base in summaries:
                summary[f"speedup_vs_{base}"] = speedup(summary, summaries[base])
        summary["identity_rate"] = identity_rate(grouped[name], grouped["ar"]) if "ar" in grouped else None
    original = {}
    if count_tokens is not None:
        for name in grouped:
            if name in BASELINES:
                continue
            for base in BASELINES:
                if base in grouped:
                    steps = _max_tokens_per_step(name, mask_num)
                    original[f"{name}_vs_{base}"] = original_metrics(grouped[name], grouped[base], count_tokens, steps)
    categories = {}
    for category in sorted({r["category"] for r in records if r.get("category")}):
        rows = [r for r in records if r.get("category") == category]
        per_method = {name: method_summary(rows_) for name, rows_ in by_method(rows).items()}
        for summary in per_method.values():
            for base in BASELINES:
                if base in per_method:
                    summary[f"speedup_vs_{base}"] = speedup(summary, per_method[base])
        categories[category] = per_method
    return dict(methods=summaries, original=original, categories=categories)
