"""SFT records: load alpaca- or sharegpt-format data and normalise it to conversations.

A dataset is named in `--dataset` (comma list, concatenated in order) as one of:
* a registry name (`DATASETS`, e.g. the recipe's `alpaca_gpt4_en` and `lima`): read from
  `<dataset_dir>/<file_name>` when that file exists, else from the hub through `datasets`;
* a path to a local `.json` / `.jsonl` file, or a file name inside `--dataset_dir`.

Formats (detected per record):
* alpaca: `instruction`, `input` (appended to the instruction after a newline when non-empty),
  `output`, optional `history` (list of `[query, response]`) and `system`;
* sharegpt: `conversations`, a list of `{"from": "human"|"gpt"|"system", "value": ...}` (or
  `role`/`content`, or plain strings alternating user/assistant).

Records with an empty prompt or response are dropped, as in the original recipe. A record with
`"unfinished": true` (an answer cut off at a length limit, as the self-distillation data marks them)
is trained without the end of turn after its last response, so the model does not learn to stop there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from space.errors import SpaceError
from space.io import read_records


@dataclass
class Conversation:
    turns: list[tuple[str, str]]  # (query, response)
    system: str | None = None
    unfinished: bool = False  # the last response was cut off by a length limit: no end of turn is trained


@dataclass(frozen=True)
class DatasetEntry:
    file_name: str
    hub_id: str
    columns: dict = field(default_factory=dict)  # hub column -> our field


DATASETS = {
    # LLaMA-Factory's alpaca_gpt4_data_en.json (about 52k single-turn records)
    "alpaca_gpt4_en": DatasetEntry("alpaca_gpt4_data_en.json", "vicgalle/alpaca-gpt4"),
    # LIMA in LLaMA-Factory's alpaca format (1,029 records; CC BY-NC-SA 4.0)
    "lima": DatasetEntry("lima.json", "GAIR/lima"),
}

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "model"}


def load_conversations(dataset: str, dataset_dir: str | Path = "data") -> list[Conversation]:
    """All conversations of a comma list of datasets, concatenated in order."""
    conversations = []
    for name in [part.strip() for part in dataset.split(",") if part.strip()]:
        conversations += load_one(name, Path(dataset_dir))
    if not conversations:
        raise SpaceError(f"dataset {dataset!r} has no usable records (empty prompts or responses are dropped)")
    return conversations


def load_one(name: str, dataset_dir: Path) -> list[Conversation]:
    for candidate in (Path(name), dataset_dir / name):
        if candidate.suffix in (".json", ".jsonl") and candidate.is_file():
            return parse_records(read_records(candidate), str(candidate))
    if name in DATASETS:
        entry = DATASETS[name]
        local = dataset_dir / entry.file_name
        if local.is_file():
            return parse_records(read_records(local), str(local))
        return parse_records(_read_hub(name, entry, local), entry.hub_id)
    if Path(name).suffix in (".json", ".jsonl"):
        raise SpaceError(f"dataset file not found: {name} (looked in . and {dataset_dir})")
    raise SpaceError(
        f"unknown dataset {name!r}: use a registry name ({', '.join(sorted(DATASETS))}) or a .json/.jsonl file path"
    )


def _read_hub(name: str, entry: DatasetEntry, local: Path) -> list[dict]:
    try:
        import datasets

        rows = datasets.load_dataset(entry.hub_id, split="train")
    except Exception as error:  # network, auth and format errors all mean "not available here"
        raise SpaceError(
            f"dataset {name!r}: {local} does not exist and the hub dataset {entry.hub_id!r} could not be loaded "
            f"({type(error).__name__}); put {entry.file_name} in --dataset_dir"
        ) from error
    return [{entry.columns.get(key, key): value for key, value in row.items()} for row in rows]


def load_conversations_of(records: list[dict], source: str) -> list:
    """The records as conversations (alpaca, with history and the unfinished mark), one per record."""
    conversations = parse_records(records, source)
    if len(conversations) != len(records):
        raise SpaceError(f"{source}: {len(records) - len(conversations)} records have an empty prompt or answer")
    return conversations


def parse_records(records: list, source: str) -> list[Conversation]:
    conversations = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise SpaceError(f"{source}: record {index} is a {type(record).__name__}, not an object")
        if "conversations" in record:
            conversation = _sharegpt(record, source, index)
        elif "instruction" in record and "output" in record:
            conversation = _alpaca(record, source, index)
        else:
            raise SpaceError(
                f"{source}: record {index} is neither alpaca (instruction/output) nor sharegpt (conversations); "
                f"its keys are {sorted(record)}"
            )
        conversation.unfinished = bool(record.get("unfinished", False))
        if conversation.turns and all(query.strip() and response.strip() for query, response in conversation.turns):
            conversations.append(conversation)
    return conversations


def _alpaca(record: dict, source: str, index: int) -> Conversation:
    query = record["instruction"] or ""
    if record.get("input"):
        query = f"{query}\n{record['input']}"
    history = record.get("history") or []
    if not all(isinstance(turn, (list, tuple)) and len(turn) == 2 for turn in history):
        raise SpaceError(f"{source}: record {index} has a 'history' that is not a list of [query, response] pairs")
    turns = [(str(q), str(r)) for q, r in history] + [(str(query), str(record["output"] or ""))]
    return Conversation(turns=turns, system=record.get("system") or None)


def _sharegpt(record: dict, source: str, index: int) -> Conversation:
    messages = record["conversations"]
    if not isinstance(messages, list):
        raise SpaceError(f"{source}: record {index} has 'conversations' that is not a list")
    system, roles, texts = record.get("system") or None, [], []
    for position, message in enumerate(messages):
        if isinstance(message, str):  # plain alternating strings, user first (e.g. GAIR/lima)
            roles.append("user" if position % 2 == 0 else "assistant")
            texts.append(message)
            continue
        if not isinstance(message, dict):
            raise SpaceError(f"{source}: record {index}, message {position} is not an object or string")
        role = str(message.get("from", message.get("role", ""))).lower()
        text = message.get("value", message.get("content"))
        if role == "system":
            system = text
            continue
        if role not in USER_ROLES | ASSISTANT_ROLES or text is None:
            raise SpaceError(f"{source}: record {index}, message {position} has unknown role {role!r} or no text")
        roles.append("user" if role in USER_ROLES else "assistant")
        texts.append(str(text))
    if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]):
        raise SpaceError(f"{source}: record {index} does not alternate user and assistant messages")
    turns = list(zip(texts[::2], texts[1::2]))
    return Conversation(turns=turns, system=system)
