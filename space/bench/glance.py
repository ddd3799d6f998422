"""The results at a glance: tables generated from the results files, so the README and docs/benchmarks.md
cannot drift from what was measured.

`docs/results/glance.json` names the runs shown (each a results directory's `summary.json`, the methods to
list and how to label them and the machine) and the pass@1 runs per language; `glance_tables` renders them,
and `update_glance` writes them between the `<!-- glance -->` and `<!-- /glance -->` markers of each page
(`scripts/make_glance.py`). A test renders them again and compares, so a page whose table is stale fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from space.errors import SpaceError
from space.io import markdown_table, write_atomic

START, END = "<!-- glance -->", "<!-- /glance -->"
SPEED_COLUMNS = ["method", "tokens_per_second", "speedup_vs_ar", "speedup_vs_prompt_lookup", "avg_tokens_per_step",
                 "identity"]
SPEED_HEADERS = ["method", "tokens/s", "speedup vs AR", "vs prompt lookup", "tokens per forward", "identical to AR"]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SpaceError(f"results file {path} cannot be read ({error}); the glance manifest names it") from None


def _speed_rows(results: Path, run: dict) -> list[dict]:
    methods = _read(results / run["summary"])["methods"]
    rows = []
    for method, label in run["methods"].items():
        if method not in methods:
            raise SpaceError(f"{run['summary']} has no method {method!r}; it has {sorted(methods)}")
        values = methods[method]
        identity = values.get("identity_rate")
        rows.append(dict(values, method=label, identity="–" if method == "ar" or identity is None else
                         f"{round(identity * values['answers'])}/{values['answers']}"))
    return rows


def glance_tables(results: str | Path) -> str:
    """The markdown of every table `results/glance.json` names, with a line saying where each run comes from."""
    results = Path(results)
    manifest = _read(results / "glance.json")
    parts = []
    for run in manifest["speed"]:
        source = Path(run["summary"]).parent
        parts.append(f"**{run['run']}**, {run['where']} ([raw](results/{source}/)):\n\n"
                     + markdown_table(_speed_rows(results, run), SPEED_COLUMNS, SPEED_HEADERS))
    quality = manifest["quality"]
    rows = []
    for language in quality["languages"]:
        row = dict(language=language)
        for column in quality["columns"]:
            summary = _read(results / quality["files"].format(language=language, column=column))
            (values,) = summary["methods"].values()
            row[column] = f"{values['pass@1']:.3f} ({values['solved']}/{values['executed']})"
        rows.append(row)
    parts.append(f"**{quality['run']}** ([raw](results/{Path(quality['files']).parent}/)):\n\n"
                 + markdown_table(rows, ["language", *quality["columns"]], ["language", *quality["columns"].values()]))
    return "\n\n".join(parts) + "\n"


def with_glance(page: str, tables: str, link_prefix: str = "") -> str:
    """`page` with the text between its glance markers replaced by `tables` (links prefixed by `link_prefix`, for a
    page outside docs/)."""
    if page.count(START) != 1 or page.count(END) != 1 or page.index(START) > page.index(END):
        raise SpaceError(f"a page needs one {START} ... {END} pair to hold the tables")
    body = tables.replace("](results/", f"]({link_prefix}results/")
    return page[: page.index(START) + len(START)] + "\n" + body + page[page.index(END) :]


def update_glance(root: str | Path) -> list[Path]:
    """Regenerate the tables in README.md and docs/benchmarks.md under `root`; returns the pages rewritten."""
    root = Path(root)
    tables = glance_tables(root / "docs" / "results")
    written = []
    for page, prefix in ((root / "README.md", "docs/"), (root / "docs" / "benchmarks.md", "")):
        text = page.read_text()
        updated = with_glance(text, tables, prefix)
        if updated != text:
            write_atomic(page, updated)
            written.append(page)
    return written
