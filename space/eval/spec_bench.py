"""Spec-Bench's model-answer files, written from an evaluation's answers and read back.

Spec-Bench (hemingkx/Spec-Bench) compares speculative decoding methods from answer files: its `evaluation/eval.py`
writes one JSON line per question, and `evaluation/speed.py --file-path <method> --base-path <baseline>
--tokenizer-path <model>` reports tokens per second and the speed-up per task. The fields, as those two scripts
write and read them:

* `question_id`, `category` (speed.py groups tasks by it: MT-bench's eight categories, `translation`,
  `summarization`, `qa`, `math_reasoning`, `rag`), `answer_id`, `model_id`, `tstamp`;
* `choices`: a list with one entry per sample (greedy: one, `index` 0) holding, one element per turn and in turn
  order, `turns` (the answer text), `decoding_steps`, `new_tokens` and `wall_time` (seconds), plus
  `accept_lengths` (tokens per forward over the whole conversation).

`write_answer_files` writes one such file per method of a run (`answer_path`); `read_answer_file` checks a file
against that format; `export_run` converts a finished run directory.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from space.errors import SpaceError
from space.io import write_atomic

# the project's general prompts under the task names speed.py reports (chat and code are MT-bench categories)
CATEGORIES = {"summary": "summarization", "passage_qa": "qa", "translation": "translation", "math": "math_reasoning",
              "chat": "writing", "code": "coding"}
CHOICE_LISTS = ("turns", "decoding_steps", "new_tokens", "wall_time")  # one element per turn


@dataclass
class ExportArgs:
    """The flags of `scripts/export_spec_bench.py`."""

    run_dir: str = field(metadata={"help": "an evaluation run directory (run_config.json, samples.jsonl)"})
    answer_file: str = field(metadata={"help": "a path with {method}, or F.jsonl -> F-<method>.jsonl"})
    model_id: str | None = field(default=None, metadata={"help": "default: the model's folder name (+ -<method>)"})


def answer_path(template: str | Path, method: str) -> Path:
    """Where `method`'s answers go: `template` with `{method}` filled in, else `<stem>-<method><suffix>`."""
    template = str(template)
    if "{method}" in template:
        return Path(template.replace("{method}", method))
    path = Path(template)
    return path.with_name(f"{path.stem}-{method}{path.suffix or '.jsonl'}")


def answer_records(records: list[dict], method: str, model_id: str, dataset: str) -> list[dict]:
    """One Spec-Bench answer per prompt that `method` answered, turns in order."""
    by_prompt: dict[str, list[dict]] = {}
    for record in records:
        if record["method"] == method:
            by_prompt.setdefault(str(record["id"]), []).append(record)
    answers = []
    for prompt_id, turns in by_prompt.items():
        turns.sort(key=lambda r: r["turn"])
        if [r["turn"] for r in turns] != list(range(len(turns))):
            raise SpaceError(f"{method}: the answers to prompt {prompt_id} miss a turn; finish the run first")
        choice = {"index": 0, "turns": [r["text"] for r in turns], "decoding_steps": [r["steps"] for r in turns],
                  "new_tokens": [len(r["ids"]) for r in turns], "wall_time": [r["seconds"] for r in turns],
                  "accept_lengths": [n for r in turns for n in r.get("tokens_per_step", [1] * len(r["ids"]))]}
        category = turns[0].get("category")
        answers.append({
            "question_id": int(prompt_id) if prompt_id.isdigit() else prompt_id,
            "category": CATEGORIES.get(category, category) if dataset == "general" else category or dataset,
            "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{method}/{prompt_id}").hex,
            "model_id": model_id,
            "choices": [choice],
            "tstamp": time.time(),
        })
    return answers


def write_answer_files(records: list[dict], methods: list[str], template: str | Path, model_id: str,
                       dataset: str) -> list[Path]:
    """One answer file per method (`answer_path`), each named `<model_id>-<method>` inside; returns the paths."""
    written = []
    for method in methods:
        path = answer_path(template, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        answers = answer_records(records, method, f"{model_id}-{method}", dataset)
        write_atomic(path, "".join(json.dumps(answer) + "\n" for answer in answers))
        written.append(path)
    return written


def read_answer_file(path: str | Path) -> list[dict]:
    """The answers of a Spec-Bench answer file; one line naming the record and field for anything speed.py could
    not read (a missing field, a per-turn list of another length, a wrong type)."""
    answers = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            answer = json.loads(line)
        except json.JSONDecodeError as error:
            raise SpaceError(f"{where}: not JSON ({error.msg})") from None
        for name in ("question_id", "category", "answer_id", "model_id", "choices", "tstamp"):
            if name not in answer:
                raise SpaceError(f"{where}: no {name!r}")
        if not isinstance(answer["choices"], list) or not answer["choices"]:
            raise SpaceError(f"{where}: 'choices' must be a non-empty list")
        for choice in answer["choices"]:
            turns = len(choice.get("turns") or [])
            for name in CHOICE_LISTS:
                values = choice.get(name)
                if not isinstance(values, list) or len(values) != turns or not turns:
                    raise SpaceError(f"{where}: choices[{choice.get('index')}].{name} must list one value per turn")
            kinds = {"turns": str, "decoding_steps": int, "new_tokens": int, "wall_time": (int, float)}
            for name, kind in kinds.items():
                if not all(isinstance(value, kind) for value in choice[name]):
                    raise SpaceError(f"{where}: choices[{choice.get('index')}].{name} holds a value that is not "
                                     f"{getattr(kind, '__name__', 'a number')}")
            if not all(isinstance(n, int) and n >= 1 for n in choice.get("accept_lengths", [])):
                raise SpaceError(f"{where}: accept_lengths must hold counts >= 1")
        answers.append(answer)
    return answers


def export_run(run_dir: str | Path, template: str | Path, model_id: str | None = None) -> list[Path]:
    """Spec-Bench answer files for every method of a finished evaluation run directory."""
    run_dir = Path(run_dir)
    config_path, samples = run_dir / "run_config.json", run_dir / "samples.jsonl"
    if not config_path.is_file() or not samples.is_file():
        raise SpaceError(f"{run_dir} holds no evaluation run (run_config.json and samples.jsonl)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    return write_answer_files(records, config["methods"], template, model_id or default_model_id(config["llm_dir"]),
                              config["dataset"])


def default_model_id(llm_dir: str | None) -> str:
    return "smollm2-135m-space" if llm_dir is None else Path(str(llm_dir).rstrip("/")).name
