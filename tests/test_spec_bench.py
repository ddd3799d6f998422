"""Spec-Bench answer files (`space.eval.spec_bench`): written by `eval_infer.py --answer_format spec-bench` and by
`scripts/export_spec_bench.py`, read back against the format Spec-Bench's eval.py writes and speed.py reads."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

import space
from space.eval import evaluate
from space.eval.datasets import load_eval_dataset
from space.eval.flags import parse_eval_args
from space.eval.spec_bench import answer_path, read_answer_file

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [  # Spec-Bench's question.jsonl format (MT-bench's): integer ids, a category, one or two turns
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now another one."]},
    {"question_id": 7, "category": "translation", "turns": ["Translate to French: good morning."]},
    {"question_id": 12, "category": "math_reasoning", "turns": ["What is 3 + 4?"]},
]


@pytest.fixture
def question_file(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def run(eval_model_dir, question_file, output, *extra):
    return evaluate(parse_eval_args(["--llm_dir", str(eval_model_dir), "--dataset", "spec-bench", "--data_path",
                                     str(question_file), "--methods", "space,ar", "--max_new_tokens", "8",
                                     "--output_dir", str(output), "--progress", "false", *extra]))


def test_eval_writes_one_spec_bench_answer_file_per_method_that_reads_back(eval_model_dir, question_file, tmp_path):
    summary = run(eval_model_dir, question_file, tmp_path / "run", "--answer_format", "spec-bench",
                  "--answer_file", str(tmp_path / "answers" / "tiny.jsonl"), "--model_id", "tiny")
    assert summary["answer_files"] == [str(tmp_path / "answers" / f"tiny-{m}.jsonl") for m in ("space", "ar")]
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    for method in ("space", "ar"):
        answers = read_answer_file(tmp_path / "answers" / f"tiny-{method}.jsonl")
        assert [a["question_id"] for a in answers] == [81, 7, 12]  # one record per question, ids as Spec-Bench's
        assert [a["category"] for a in answers] == ["writing", "translation", "math_reasoning"]
        assert {a["model_id"] for a in answers} == {f"tiny-{method}"}
        for answer in answers:
            mine = sorted((r for r in records if r["method"] == method and r["id"] == str(answer["question_id"])),
                          key=lambda r: r["turn"])
            (choice,) = answer["choices"]
            assert choice["index"] == 0 and choice["turns"] == [r["text"] for r in mine]  # turns in order
            assert choice["new_tokens"] == [len(r["ids"]) for r in mine]
            assert choice["wall_time"] == [r["seconds"] for r in mine]
            assert choice["decoding_steps"] == [r["steps"] for r in mine]
            assert sum(choice["accept_lengths"]) == sum(choice["new_tokens"])  # tokens per forward, every turn
    # what speed.py computes from them: tokens per second of each question, the method's over the baseline's
    space_answers = read_answer_file(tmp_path / "answers" / "tiny-space.jsonl")
    assert all(sum(a["choices"][0]["new_tokens"]) / sum(a["choices"][0]["wall_time"]) > 0 for a in space_answers)


def test_the_export_script_converts_a_finished_run(eval_model_dir, question_file, tmp_path):
    run(eval_model_dir, question_file, tmp_path / "run")
    main = runpy.run_path(str(ROOT / "scripts" / "export_spec_bench.py"))["main"]
    written = main(["--run_dir", str(tmp_path / "run"), "--answer_file", str(tmp_path / "out" / "{method}.jsonl")])
    assert written == [tmp_path / "out" / "space.jsonl", tmp_path / "out" / "ar.jsonl"]
    answers = read_answer_file(written[1])
    assert len(answers) == 3 and answers[0]["model_id"] == "model-ar"  # the model folder's name
    with pytest.raises(space.SpaceError, match="holds no evaluation run"):
        main(["--run_dir", str(tmp_path), "--answer_file", str(tmp_path / "x.jsonl")])


def good_answer() -> dict:
    return {"question_id": 1, "category": "qa", "answer_id": "a", "model_id": "m", "tstamp": 1.0,
            "choices": [{"index": 0, "turns": ["x", "y"], "decoding_steps": [2, 1], "new_tokens": [3, 1],
                         "wall_time": [0.5, 0.1], "accept_lengths": [2, 1, 1]}]}


@pytest.mark.parametrize("damage, message", [
    (lambda a: a.pop("category"), "no 'category'"),
    (lambda a: a["choices"][0]["new_tokens"].pop(), "new_tokens must list one value per turn"),
    (lambda a: a["choices"][0]["wall_time"].__setitem__(0, "fast"), "wall_time holds a value that is not"),
    (lambda a: a["choices"][0]["turns"].__setitem__(1, 3), "turns holds a value that is not str"),
    (lambda a: a["choices"][0]["accept_lengths"].append(0), "accept_lengths must hold counts"),
    (lambda a: a.update(choices=[]), "'choices' must be a non-empty list"),
])
def test_the_reader_refuses_what_speed_py_could_not_read(tmp_path, damage, message):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps(good_answer()) + "\n")
    assert read_answer_file(path)[0]["choices"][0]["turns"] == ["x", "y"]
    answer = good_answer()
    damage(answer)
    path.write_text(json.dumps(answer) + "\n")
    with pytest.raises(space.SpaceError, match=message):
        read_answer_file(path)


def test_answer_paths_and_the_question_file(question_file):
    assert answer_path("a/b.jsonl", "space") == Path("a/b-space.jsonl")
    assert answer_path("a/{method}/answers.jsonl", "ar") == Path("a/ar/answers.jsonl")
    prompts = load_eval_dataset("spec-bench", str(question_file))
    assert [(p.id, p.category, len(p.turns)) for p in prompts] == [("81", "writing", 2), ("7", "translation", 1),
                                                                    ("12", "math_reasoning", 1)]
    with pytest.raises(space.SpaceError, match="Spec-Bench's data/spec_bench/question.jsonl"):
        load_eval_dataset("spec-bench")
    with pytest.raises(space.SpaceError, match="--answer_file names where --answer_format writes"):
        evaluate(parse_eval_args(["--answer_file", "x.jsonl"]))
