"""Evaluation datasets -> `EvalPrompt`s (one or more user turns each).

| name | source | turns | quality |
|---|---|---|---|
| `human_eval` | vendored HumanEval-X Python, the original instruction prompt (docs/spec/SPACE.md §4.2) | 1 | pass@1 |
| `humaneval-x-{python,cpp,java,js,go}` | vendored HumanEval-X, the same instruction per language | 1 | pass@1 |
| `mt-bench` | FastChat `question.jsonl` (`--data_path`) or a hub name | 2 | per-category speed |
| `spec-bench` | Spec-Bench's `data/spec_bench/question.jsonl` (`--data_path`), MT-bench's format | 1-2 | per category |
| `cip` | chatbot instruction prompts, first 100 `prompt`s (`--data_path` or hub) | 1 | - |
| `xsum` | `document` / `summary` (`--data_path` or hub) | 1 | ROUGE-L |
| `general` | the project's own (`data/general/`): 72 prompts, 12 in each of 6 categories | 1 (chat: 2) | per category |

`--data_path` may be a local `.json`/`.jsonl`(`.gz`) file or a hub dataset name (read with `datasets`).
This module also owns the vendored HumanEval-X files (`load_problems`) and their language list, which
the code-execution package `space.eval.code` reuses, and the vendored `general` prompts (`id`, `category`,
`turns` per line; a `--data_path` file in the same format replaces them).
The faithful `human_eval` instruction keeps the original's two-backtick typo (`end with '``'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from space.errors import SpaceError
from space.io import read_records

DATA_DIR = Path(__file__).resolve().parent / "data"
HUMANEVAL_DIR = DATA_DIR / "humaneval-x"
GENERAL_PATH = DATA_DIR / "general" / "prompts.jsonl"
HUMANEVAL_LANGUAGES = ("python", "cpp", "java", "js", "go")
LANGUAGE_NAMES = {"python": "python", "cpp": "C++", "java": "Java", "js": "JavaScript", "go": "Go"}
FENCES = {"python": "python", "cpp": "cpp", "java": "java", "js": "javascript", "go": "go"}
ORIGINAL_HUMANEVAL_INSTRUCTION = (
    "Complete the following python code. Give the answer in a code block starts with '```python' and end with '``'"
)
# The original's generation budget per dataset (docs/spec/SPACE.md §4.2); xsum and general are ours.
DEFAULT_MAX_NEW_TOKENS = {"human_eval": 1024, "humaneval-x": 1024, "mt-bench": 1024, "cip": 512, "xsum": 128,
                          "general": 256, "spec-bench": 1024}  # Spec-Bench's own default: 1024
HUB_NAMES = {"mt-bench": "HuggingFaceH4/mt_bench_prompts", "cip": "alespalla/chatbot_instruction_prompts",
             "xsum": "EdinburghNLP/xsum"}
XSUM_INSTRUCTION = "Summarize the following article in one sentence.\n\n"
# The fields `space.eval.code` reads to run a HumanEval-X program, per language: checked at loading, so a
# --data_path without them fails before any answer is generated, not after every one.
EXECUTION_FIELDS = {"python": ("test",), "cpp": ("test", "declaration"), "java": ("test",), "js": ("test",),
                    "go": ("test", "test_setup")}


@dataclass
class EvalPrompt:
    id: str
    turns: list[str]  # user messages; each method answers them in order, keeping its own history
    category: str | None = None
    reference: str | None = None  # xsum: the gold summary
    problem: dict | None = field(default=None, repr=False)  # humaneval: the record, for execution
    language: str | None = None


def dataset_names() -> list[str]:
    return ["human_eval", *[f"humaneval-x-{lang}" for lang in HUMANEVAL_LANGUAGES], "mt-bench", "spec-bench", "cip",
            "xsum", "general"]


def default_max_new_tokens(name: str) -> int:
    return DEFAULT_MAX_NEW_TOKENS["humaneval-x" if name.startswith("humaneval-x") else name]


def load_eval_dataset(name: str, data_path: str | None = None, num_samples: int | None = None,
                      execute: bool = True) -> list[EvalPrompt]:
    """The first `num_samples` prompts (default: all) of dataset `name`; with `execute` (pass@1 runs the
    programs), HumanEval records must carry the fields their tests need."""
    if num_samples is not None and num_samples < 1:
        raise SpaceError(f"--num_samples must be at least 1 (got {num_samples}); leave it out for every prompt")
    if name == "human_eval":
        prompts = _humaneval("python", data_path, faithful=True, execute=execute)
    elif name.startswith("humaneval-x-") and name.split("-", 2)[2] in HUMANEVAL_LANGUAGES:
        prompts = _humaneval(name.split("-", 2)[2], data_path, faithful=False, execute=execute)
    elif name in ("mt-bench", "spec-bench"):
        prompts = _conversations(_records(name, data_path), name)
    elif name == "cip":
        prompts = [EvalPrompt(id=str(i), turns=[_field(r, "prompt", name, i)])
                   for i, r in enumerate(_records(name, data_path)[:100])]
    elif name == "xsum":
        prompts = [EvalPrompt(id=str(r.get("id", i)), turns=[XSUM_INSTRUCTION + _field(r, "document", name, i)],
                              reference=_field(r, "summary", name, i)) for i, r in enumerate(_records(name, data_path))]
    elif name == "general":
        prompts = _conversations(_records(name, data_path) if data_path else _vendored(GENERAL_PATH), name)
    else:
        raise SpaceError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")
    if not prompts:
        raise SpaceError(f"dataset {name!r} has no prompts")
    return prompts[:num_samples] if num_samples is not None else prompts


def check_language(language: str) -> None:
    if language not in HUMANEVAL_LANGUAGES:
        raise SpaceError(f"unknown language {language!r}: use one of {', '.join(HUMANEVAL_LANGUAGES)}")


def load_problems(language: str) -> list[dict]:
    """The 164 vendored HumanEval-X records of `language`, in file order (task ids `<Lang>/0` ... `/163`)."""
    check_language(language)
    path = HUMANEVAL_DIR / f"humaneval_{language}.jsonl.gz"
    if not path.is_file():
        raise SpaceError(f"HumanEval-X data for {language} not found at {path}: reinstall the package")
    return read_records(path)


def humaneval_instruction(language: str, faithful: bool) -> str:
    if faithful:
        return ORIGINAL_HUMANEVAL_INSTRUCTION
    return (f"Complete the following {LANGUAGE_NAMES[language]} code. Give the answer in a code block "
            f"starts with '```{FENCES[language]}' and end with '```'")


def _humaneval(language: str, data_path: str | None, faithful: bool, execute: bool = True) -> list[EvalPrompt]:
    records = _records("human_eval", data_path) if data_path else load_problems(language)
    instruction = humaneval_instruction(language, faithful)
    prompts = []
    for index, record in enumerate(records):
        prompt = _field(record, "prompt", "human_eval", index)
        missing = [key for key in EXECUTION_FIELDS[language] if execute and key not in record]
        if missing:
            raise SpaceError(f"human_eval: record {index} of {data_path} has no {missing[0]!r} field, which pass@1 "
                             f"runs ({language}); add it, or pass --pass_at_k false to measure speed only")
        prompts.append(EvalPrompt(id=str(record.get("task_id", index)), turns=[instruction + "\n" + prompt],
                                  problem=record, language=language))
    return prompts


def _conversations(records: list[dict], dataset: str) -> list[EvalPrompt]:
    """mt-bench and general records: a `turns` list (or `prompt`), an id and an optional `category`."""
    prompts = []
    for index, record in enumerate(records):
        turns = record.get("turns", record.get("prompt"))
        if not isinstance(turns, list) or not turns:
            raise SpaceError(f"{dataset}: record {index} has no 'turns' list")
        prompt_id = record.get("question_id", record.get("prompt_id", record.get("id", index)))
        prompts.append(EvalPrompt(id=str(prompt_id), turns=list(turns), category=record.get("category")))
    return prompts


def _vendored(path: Path) -> list[dict]:
    if not path.is_file():
        raise SpaceError(f"vendored data not found at {path}: reinstall the package")
    return read_records(path)


def _field(record: dict, key: str, dataset: str, index: int) -> str:
    if key not in record:
        raise SpaceError(f"{dataset}: record {index} has no {key!r} field (keys: {sorted(record)})")
    return str(record[key])


def _records(dataset: str, data_path: str | None) -> list[dict]:
    if data_path is None:
        if dataset == "spec-bench":  # 480 questions (MT-bench's 80 and 80 in each of five tasks), not on the hub
            raise SpaceError("dataset 'spec-bench' is not vendored: pass --data_path with Spec-Bench's "
                             "data/spec_bench/question.jsonl (github.com/hemingkx/Spec-Bench)")
        raise SpaceError(f"dataset {dataset!r} is not vendored: pass --data_path (a local .json/.jsonl file, "
                         f"or a hub dataset such as {HUB_NAMES.get(dataset, 'its hub name')})")
    path = Path(data_path)
    if path.exists() or path.suffix in (".json", ".jsonl", ".gz"):
        if not path.is_file():
            raise SpaceError(f"data file not found: {data_path}")
        records = read_records(path)
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise SpaceError(f"{data_path}: record {index} is a {type(record).__name__}, not a JSON object")
        return records
    try:
        import datasets

        rows = datasets.load_dataset(data_path, split="test" if dataset in ("cip", "xsum") else "train")
    except Exception as error:  # offline, unknown name, wrong split: all mean "not available"
        raise SpaceError(f"could not load {data_path!r} for {dataset} from the hub ({type(error).__name__}); "
                         "pass a local file with --data_path") from error
    return [dict(row) for row in rows]
