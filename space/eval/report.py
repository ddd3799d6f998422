"""The evaluation's reports: the summary table (and its per-category one) and the figure (tokens/step and
speedup). The figure needs matplotlib (an `eval` extra); without it the PNG is skipped with a note, never the
run. The markdown table itself is `space.io.markdown_table`, shared by every report.
"""

from __future__ import annotations

from pathlib import Path

from space.eval.metrics import BASELINES
from space.io import markdown_table


def summary_table(summary: dict) -> str:
    """One row per method: speed, acceptance, identity and quality."""
    methods = summary["methods"]
    baselines = [b for b in ("ar", "hf", "prompt_lookup") if b in methods]
    columns = ["method", "tokens_per_second", *[f"speedup_vs_{b}" for b in baselines], "avg_tokens_per_step",
               "target_forwards", "avg_rows_per_step", "by_branch", "identity_rate", "pass@1", "rouge_l"]
    headers = ["method", "tokens/s", *[f"speedup vs {b}" for b in baselines], "tokens/step", "forwards",
               "rows/step", "accepted/step: chain, copy, top-k", "identity", "pass@1", "ROUGE-L"]
    rows = [dict(method=name, **values, by_branch=_by_branch(values)) for name, values in methods.items()]
    keep = [i for i, c in enumerate(columns) if c == "method" or any(r.get(c) is not None for r in rows)]
    return markdown_table(rows, [columns[i] for i in keep], [headers[i] for i in keep])


def _by_branch(values: dict) -> str | None:
    branches = values.get("accepted_per_step_by_branch")
    return None if branches is None else ", ".join(f"{branches[name]:.2f}" for name in ("chain", "copy", "topk"))


def category_table(summary: dict) -> str:
    """One row per category and method (datasets whose prompts have a category): speed against the
    baselines present and tokens per step; empty without categories."""
    categories = summary.get("categories") or {}
    if not categories:
        return ""
    baselines = [b for b in BASELINES if b in summary["methods"]]
    columns = ["category", "method", "answers", "tokens_per_second", *[f"speedup_vs_{b}" for b in baselines],
               "avg_tokens_per_step"]
    headers = ["category", "method", "answers", "tokens/s", *[f"speedup vs {b}" for b in baselines], "tokens/step"]
    rows = [dict(category=category, method=method, **methods[method])  # methods in the main table's order
            for category, methods in categories.items() for method in summary["methods"] if method in methods]
    return markdown_table(rows, columns, headers)


def draw_figure(summary: dict, path: Path) -> Path | None:
    """Left: share of steps emitting n tokens, per method with drafts. Right: speedup vs AR."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; no figure (pip install matplotlib)")
        return None
    methods = summary["methods"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    drafted = {name: m["tokens_per_step_histogram"] for name, m in methods.items()
               if any(int(n) > 1 for n in m["tokens_per_step_histogram"])}
    width = 0.8 / max(len(drafted), 1)
    for offset, (name, histogram) in enumerate(drafted.items()):
        total = sum(histogram.values())
        sizes = sorted(int(n) for n in histogram)
        left.bar([n + offset * width for n in sizes], [histogram[str(n)] / total for n in sizes], width, label=name)
    left.set_xlabel("tokens emitted per target forward")
    left.set_ylabel("share of steps")
    left.set_title("tokens per step")
    if drafted:
        left.legend()
    base = "ar" if "ar" in methods else next(iter(methods))
    names = list(methods)
    values = [methods[n].get(f"speedup_vs_{base}") or 0.0 for n in names]
    bars = right.bar(names, values, color=["tab:gray" if n == base else "tab:blue" for n in names])
    for bar, name in zip(bars, names):
        rate = methods[name].get("tokens_per_second")
        right.annotate(f"{rate:.1f} tok/s" if rate else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       ha="center", va="bottom", fontsize=8)
    right.axhline(1.0, color="black", linewidth=0.8)
    right.set_ylabel(f"speedup vs {base} (tokens/s ratio)")
    right.set_title(f"{summary.get('dataset', '')}: wall-clock speedup")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
