"""The documentation: a README that stays a guide, "at a glance" tables generated from the results files, and
links that lead somewhere."""

import json
import re
import shutil
from pathlib import Path

import pytest

from space.bench.glance import END, START, glance_tables, update_glance, with_glance
from space.errors import SpaceError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page, prefix", [("README.md", "docs/"), ("docs/benchmarks.md", "")])
def test_the_glance_tables_are_the_results_files(page, prefix):
    """Regenerated from docs/results, each page's tables are unchanged (`python scripts/make_glance.py` writes them)."""
    text = (ROOT / page).read_text()
    assert with_glance(text, glance_tables(ROOT / "docs" / "results"), prefix) == text, \
        f"{page}'s tables are stale: run python scripts/make_glance.py"


def test_the_tables_follow_the_files_they_are_made_from(tmp_path):
    """A changed result changes the table: the pages are written from the files, not kept by hand."""
    results = tmp_path / "docs" / "results"
    manifest = json.loads((ROOT / "docs" / "results" / "glance.json").read_text())
    results.mkdir(parents=True)
    shutil.copy(ROOT / "docs" / "results" / "glance.json", results / "glance.json")
    files = [run["summary"] for run in manifest["speed"]]
    quality = manifest["quality"]
    files += [quality["files"].format(language=language, column=column)
              for language in quality["languages"] for column in quality["columns"]]
    for name in files:
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "docs" / "results" / name, results / name)
    for page in ("README.md", "docs/benchmarks.md"):
        (tmp_path / page).write_text(f"# page\n\n{START}\nold table\n{END}\n\nthe rest\n")
    assert len(update_glance(tmp_path)) == 2 and update_glance(tmp_path) == []  # written once, then up to date
    first = manifest["speed"][0]
    summary = json.loads((results / first["summary"]).read_text())
    summary["methods"]["space"]["tokens_per_second"] = 123.456
    (results / first["summary"]).write_text(json.dumps(summary))
    update_glance(tmp_path)
    for page in ("README.md", "docs/benchmarks.md"):
        text = (tmp_path / page).read_text()
        assert "| 123 |" in text and "old table" not in text and text.endswith("\n\nthe rest\n")
    with pytest.raises(SpaceError, match="one <!-- glance -->"):
        with_glance("no markers", "tables")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(target)
        elif anchor and destination.suffix == ".md" and anchor not in _anchors(destination):
            broken.append(target)
    assert not broken, broken
