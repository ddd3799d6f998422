"""Where an evaluation's answers live: a run directory that keeps them through interruptions.

Nothing is lost, nothing is mixed: `ResultStore` appends each prompt's answers to `samples.jsonl`
as soon as the prompt is done, and a rerun with the same settings (`run_config.json`) redoes exactly
the prompts whose answers are incomplete (a damaged line costs only its prompt; each (prompt, turn,
method) counts once). The store writes, replaces and deletes only its own files (`RUN_FILES`), never
the directory; it refuses a non-empty directory that holds no run, refuses a run with other settings
unless `overwrite` (then only that run's files are removed), and holds a lock (`eval.lock`) for the
whole run, so two runs never write into one directory at once. A data-parallel run (`space.eval.ranks`) adds
one part file per rank (`samples.rank<r>.jsonl`) that rank 0 merges into `samples.jsonl`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from space.errors import SpaceError
from space.eval.datasets import EvalPrompt
from space.io import JsonlLog, OutputLock, write_json

CONFIG_FILE = "run_config.json"
SAMPLES_FILE = "samples.jsonl"
LOCK_FILE = "eval.lock"
# Every file a run writes (`space.eval.pipeline` writes the summaries and CSVs under these names): the only
# files the store ever replaces or deletes.
RUN_FILES = (CONFIG_FILE, SAMPLES_FILE, "summary.json", "summary.md", "summary.png", "token_dict.csv", "res_dict.csv")
RESUMABLE_KEYS = ("num_samples",)  # changing these extends a run instead of invalidating it
RECOMPUTED_KEYS = ("quality",)  # changing these recomputes the kept answers' quality fields (pass@1)
QUALITY_FIELDS = ("passed", "exec_status")  # what the quality settings decide in a stored answer
RECORD_KEY = ("id", "turn", "method")  # one answer: counted once
# settings added after runs were made: a run that does not record one was made with this value
ADDED_SETTINGS = {"carry_state": True, "batch_size": 1}


PART_FILES = re.compile(r"samples\.rank\d+\.jsonl(\.tmp)?")  # one rank's answers while several ranks run


def own_names() -> set[str]:
    """The names the store may find in a run directory: its files, their temporary twins, the lock (and the
    ranks' part files, `is_own`)."""
    return {*RUN_FILES, *(name + ".tmp" for name in RUN_FILES), LOCK_FILE}


def is_own(name: str) -> bool:
    return name in own_names() or PART_FILES.fullmatch(name) is not None


def part_path(directory: str | Path, rank: int) -> Path:
    """Where rank `rank` of a data-parallel run appends its answers until rank 0 merges them (`space.eval.ranks`)."""
    return Path(directory) / f"samples.rank{rank}.jsonl"


def part_paths(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if PART_FILES.fullmatch(path.name) and path.suffix == ".jsonl")


def check_output_dir(directory: str | Path) -> None:
    """One clear error, before any model is loaded, for a directory the store cannot use: a file, a
    non-empty directory that holds no evaluation run (never adopted, not even with --overwrite), or a run
    that another process is writing now."""
    directory = Path(directory)
    existing = next(path for path in (directory, *directory.parents) if path.exists() or path == Path(path.anchor))
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == directory else f"is inside {existing}, which is a file"
        raise SpaceError(f"--output_dir {directory} {what}, not a directory: choose a directory")
    if not directory.is_dir():
        return
    strangers = sorted(entry.name for entry in directory.iterdir() if not is_own(entry.name))
    if strangers and not (directory / CONFIG_FILE).is_file():
        shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
        raise SpaceError(f"--output_dir {directory} is not empty ({shown}) and holds no evaluation run (no "
                         f"{CONFIG_FILE}); choose a new or empty directory (--overwrite never adopts one)")
    run_lock(directory).acquire().release()  # in use now: say so before the model is loaded


def run_lock(directory: Path) -> OutputLock:
    return OutputLock(directory / LOCK_FILE, f"--output_dir {directory}")


class ResultStore:
    """The run in one output directory: its settings, its answers and its lock (see the module docstring).

    Use it as a context manager (or call `close()`): the lock is held from construction to close.
    """

    def __init__(self, output_dir: str | Path, config: dict, overwrite: bool = False):
        self.dir = Path(output_dir)
        self.config = config
        self.replaced = False  # whether `overwrite` removed a run with other settings
        check_output_dir(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpaceError(f"cannot create --output_dir {self.dir} ({error.strerror}): choose another") from error
        self._lock = run_lock(self.dir).acquire()
        try:
            self._start(overwrite)
        except BaseException:
            self.close()
            raise

    def _start(self, overwrite: bool) -> None:
        """Adopt, refuse or replace what the directory holds (under the lock)."""
        previous = self._previous_config(overwrite)
        if previous is not None:
            changes = settings_changes(previous, self.config)
            if changes and not overwrite:
                raise SpaceError(f"{self.dir} holds a run with other settings ({'; '.join(changes)}): choose "
                                 "another --output_dir, or pass --overwrite to replace that run's files")
            if changes:
                self._remove_run()
                self.replaced = True
                print(f"--overwrite: replaced the run in {self.dir} ({'; '.join(changes)})", file=sys.stderr)
                previous = None
        self.log = JsonlLog(self.samples_path)
        records = self.log.resume()  # damaged lines are dropped before anything is appended after them
        unique = first_of_each(records)
        recompute = previous is not None and any(previous.get(k) != self.config.get(k) for k in RECOMPUTED_KEYS)
        if recompute:  # other quality settings: the answers stay, their pass@1 is measured again
            unique = [{k: v for k, v in r.items() if k not in QUALITY_FIELDS} for r in unique]
        if len(unique) < len(records) or recompute:
            self.log.rewrite(unique)  # duplicates (concurrent runs of an older, unlocked version) count once
        # the settings last: a run stopped before this point finds the old ones and does the same again
        write_json(self.dir / CONFIG_FILE, self.config, sort_keys=True)
        damaged = self.log.damaged + sum(_key(r) is None for r in records)
        if damaged:
            print(f"{self.samples_path}: skipped {damaged} damaged line(s); the prompts they belonged to are "
                  "answered again", file=sys.stderr)
        self._answered_ids = {r["id"] for r in unique}

    def _previous_config(self, overwrite: bool) -> dict | None:
        """The settings of the run the directory holds; None for none. Run files without readable settings
        (a damaged or deleted run_config.json) cannot be resumed: refused, or removed with `overwrite`."""
        path = self.dir / CONFIG_FILE
        previous = None
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
        if isinstance(previous, dict):
            return previous
        leftovers = sorted(name for name in RUN_FILES if (self.dir / name).exists())
        if leftovers and not overwrite:
            raise SpaceError(f"{self.dir} holds run files ({', '.join(leftovers)}) without readable settings "
                             f"({CONFIG_FILE}), so that run cannot be resumed: pass --overwrite to replace its "
                             "files or choose another --output_dir")
        self._remove_run()
        return None

    def _remove_run(self) -> None:
        """Only the run's own files go; the directory and anything else in it stay."""
        for path in self.dir.iterdir():
            if is_own(path.name) and path.name != LOCK_FILE and (path.is_file() or path.is_symlink()):
                path.unlink()

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def samples_path(self) -> Path:
        return self.dir / SAMPLES_FILE

    def records(self) -> list[dict]:
        """Every stored answer, each (prompt, turn, method) once."""
        return first_of_each(self.log.read())

    def done_ids(self, prompts: list[EvalPrompt], methods: list[str]) -> set[str]:
        return complete_ids(self.records(), prompts, methods)

    def add_prompt(self, prompt_id: str, records: list[dict]) -> None:
        """Store one prompt's answers. A prompt with answers already stored was incomplete (an interruption
        or a damaged line): its old answers are replaced in the same atomic write, never counted twice."""
        if prompt_id in self._answered_ids:
            self.log.rewrite([r for r in self.records() if r["id"] != prompt_id] + records)
        else:
            self.log.append(records)
            self._answered_ids.add(prompt_id)

    def add_answers(self, records: list[dict]) -> None:
        """Store answers of several prompts (other ranks' parts): like `add_prompt` per prompt, in one write."""
        by_id: dict[str, list[dict]] = {}
        for record in records:
            by_id.setdefault(record["id"], []).append(record)
        if not by_id:
            return
        if set(by_id) & self._answered_ids:
            self.log.rewrite([r for r in self.records() if r["id"] not in by_id] + records)
        else:
            self.log.append(records)
        self._answered_ids |= set(by_id)

    def rewrite(self, records: list[dict]) -> None:
        """Replace samples.jsonl atomically (used to add quality fields at the end)."""
        self.log.rewrite(records)


def settings_changes(previous: dict, config: dict) -> list[str]:
    """What differs between two runs' settings, by flag (`--max_new_tokens 12 -> 8`); resumable and
    recomputed keys are not differences."""
    changes = []
    for key in sorted(set(previous) | set(config)):
        old, new = previous.get(key, ADDED_SETTINGS.get(key)), config.get(key, ADDED_SETTINGS.get(key))
        if key in RESUMABLE_KEYS + RECOMPUTED_KEYS or old == new:
            continue
        if key == "options" and previous.get("methods") == config.get("methods") and isinstance(old, dict) \
                and isinstance(new, dict):
            named = {}
            for method in new:
                for option in set(old.get(method, {})) | set(new[method]):
                    values = (old.get(method, {}).get(option), new[method].get(option))
                    if values[0] != values[1]:
                        named.setdefault(option, values)
            changes += [f"--{option} {_short(a)} -> {_short(b)}" for option, (a, b) in sorted(named.items())]
        elif key != "options":  # other methods: --methods says it
            changes.append(f"--{key} {_short(old)} -> {_short(new)}")
    return changes


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _key(record: dict) -> tuple | None:
    if not all(k in record for k in RECORD_KEY):
        return None  # parses, but is no answer: as damaged as a torn line
    return tuple(str(record[k]) for k in RECORD_KEY)


def first_of_each(records: list[dict]) -> list[dict]:
    seen, kept = set(), []
    for record in records:
        key = _key(record)
        if key is not None and key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def complete_ids(records: list[dict], prompts: list[EvalPrompt], methods: list[str]) -> set[str]:
    """Ids of the prompts whose every turn was answered by every method."""
    answered = {(r["id"], r["turn"], r["method"]) for r in records}
    return {p.id for p in prompts
            if all((p.id, turn, method) in answered for turn in range(len(p.turns)) for method in methods)}


