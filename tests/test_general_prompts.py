"""The `general` dataset: the project's own prompts, their shape, that they ship, and a run's per-category report."""

import fnmatch
import json
from collections import Counter
from pathlib import Path

import pytest
import tomllib

from space.eval import evaluate
from space.eval.datasets import GENERAL_PATH, dataset_names, default_max_new_tokens, load_eval_dataset, load_problems
from space.eval.flags import parse_eval_args

ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ("summary", "passage_qa", "translation", "math", "chat", "code")
SUMMARY_INSTRUCTION = "Summarize the following passage in two or three sentences.\n\n"
QUESTION = "\n\nAnswer from the passage: "


def passage(prompt) -> str:
    text = prompt.turns[0]
    if prompt.category == "summary":
        assert text.startswith(SUMMARY_INSTRUCTION), prompt.id
        return text.removeprefix(SUMMARY_INSTRUCTION)
    assert QUESTION in text and text.rsplit(QUESTION, 1)[1].strip(), prompt.id
    return text.rsplit(QUESTION, 1)[0]


def test_general_is_a_dataset_with_its_own_budget():
    assert "general" in dataset_names() and default_max_new_tokens("general") == 256


def test_six_categories_of_twelve_interleaved_with_unique_ids():
    prompts = load_eval_dataset("general")
    assert len(prompts) >= 72
    counts = Counter(p.category for p in prompts)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 12, counts
    assert len({p.id for p in prompts}) == len(prompts)
    assert all(p.id.rsplit("-", 1)[0] == p.category for p in prompts)
    assert [p.category for p in prompts[:6]] == list(CATEGORIES)  # --num_samples N takes a mix


def test_turns_and_passage_lengths():
    for prompt in load_eval_dataset("general"):
        assert len(prompt.turns) == (2 if prompt.category == "chat" else 1), prompt.id
        assert all(isinstance(t, str) and t.strip() for t in prompt.turns), prompt.id
        if prompt.category in ("summary", "passage_qa"):
            assert 150 <= len(passage(prompt).split()) <= 300, prompt.id


def test_no_humaneval_prompt_text():
    texts = [turn for prompt in load_eval_dataset("general") for turn in prompt.turns]
    for problem in load_problems("python"):
        lines = [line.strip() for line in problem["prompt"].splitlines() if line.strip()]
        signatures = [line for line in lines if line.startswith("def ")]
        for needle in [lines[0], *signatures, *(s.split("(")[0] + "(" for s in signatures)]:
            assert not any(needle in text for text in texts), (problem["task_id"], needle)


def test_data_path_replaces_the_vendored_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"id": "x-01", "category": "x", "turns": ["hi", "and?"]}) + "\n")
    [prompt] = load_eval_dataset("general", str(path))
    assert (prompt.id, prompt.category, prompt.turns) == ("x-01", "x", ["hi", "and?"])


def test_data_files_are_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["space.eval"]
    package = ROOT / "space" / "eval"
    for name in ("prompts.jsonl", "README.md"):
        relative = (GENERAL_PATH.parent / name).relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


@pytest.fixture
def tiny_dir(eval_model_dir):
    return eval_model_dir


def test_run_reports_each_category(tiny_dir, tmp_path):
    output = tmp_path / "run"
    summary = evaluate(parse_eval_args([
        "--llm_dir", str(tiny_dir), "--dataset", "general", "--num_samples", "8", "--methods", "space,ar",
        "--max_new_tokens", "6", "--pass_at_k", "false", "--output_dir", str(output), "--progress", "false"]))
    assert set(summary["categories"]) == set(CATEGORIES)  # the first 8 prompts cover all six
    for methods in summary["categories"].values():
        assert set(methods) == {"space", "ar"} and methods["space"]["speedup_vs_ar"] > 0
    samples = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * (8 + 1)  # chat-01 has two turns
    assert summary["methods"]["space"]["identity_rate"] == 1.0
    markdown = (output / "summary.md").read_text()
    assert "## Per category" in markdown
    for category in CATEGORIES:
        assert f"| {category} | space |" in markdown and f"| {category} | ar |" in markdown
