"""Record files: reading JSON/JSONL records, atomic writes and resumable JSONL logs.

Every resumable file of the project (the evaluation's `samples.jsonl`, the distillation answers, the
skip-layer search's trial log) is a `JsonlLog`: one JSON object per line, appended a record (or a batch)
at a time and flushed, so an interruption can only tear the last line. The one rule for a damaged line
(torn by an interruption, or spoilt in the middle by an editor or a disk): reading skips every line that
does not parse as a JSON object and keeps all the others, so one bad line costs only its own record
(the caller redoes what that record belonged to), and `resume()` rewrites the file without the damaged
lines before anything is appended after them. Whole-file outputs (`summary.json`, `space.json`,
reports) go through `write_atomic`, so a reader never sees half a file.

One rule keeps two processes from writing one resumable output at once: the writer holds an `OutputLock` for
the whole run, an exclusive `flock` on a lock file (a directory output's own, inside it: `eval.lock`,
`train.lock`, ...; a file output's `<name>.lock` beside it). The kernel drops it when the process ends, however
it ends, so a killed run never leaves a stale lock; a second writer is refused with the first one's pid.

Reports share `markdown_table` (every printed and written results table) and `provenance` (what a result was
measured with and on: versions, device, threads, date, commit), which every benchmark writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import json
import os
import platform
import subprocess
import zlib
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path
from typing import Iterable

import torch

from space.errors import SpaceError


def shipped(*parts: str) -> Path:
    """The path of a file shipped inside the package (`space/configs/...`, package data): the same from a checkout
    and from an installed wheel."""
    return Path(str(resources.files("space").joinpath(*parts)))


@contextlib.contextmanager
def writing(path: Path):
    """A full disk (or quota) while writing `path` is one line: what was written before is kept (a resumable log's
    earlier records, the old version of a whole file), and the same command resumes once there is room."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise SpaceError(f"no space left to write {path} ({error.strerror}): what was finished is kept; free some "
                         "space and rerun the same command to resume") from None


def write_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` in one step (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            with temporary.open("w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            temporary.unlink(missing_ok=True)  # the old file stays as it was
            raise
        temporary.replace(path)


def write_json(path: str | Path, data, indent: int | None = 2, sort_keys: bool = False) -> None:
    """`data` as JSON (with a final newline), written atomically."""
    write_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


class JsonlLog:
    """An append-only JSONL file that a rerun resumes (see the module docstring for the damaged-line rule)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.damaged = 0  # lines the last read skipped

    def read(self) -> list[dict]:
        """Every record of the file; a line that does not parse as a JSON object is skipped (and counted
        in `damaged`), so the valid records after it are kept."""
        self.damaged = 0
        if not self.path.is_file():
            return []
        records = []
        # bytes, split on newlines only: a damaged line may hold invalid UTF-8 or a stray carriage return
        for line in self.path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                self.damaged += 1
        return records

    def resume(self) -> list[dict]:
        """`read()`, and rewrite the file without its damaged lines so that appends continue a clean log."""
        records = self.read()
        if self.path.is_file() and self.path.read_bytes() != _lines(records).encode("utf-8"):
            self.rewrite(records)
        return records

    def append(self, records: dict | Iterable[dict]) -> None:
        """Add one record or a batch; a batch is written with one call, then flushed."""
        batch = [records] if isinstance(records, dict) else list(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writing(self.path), self.path.open("a") as handle:  # a torn last line is skipped on resume
            handle.write(_lines(batch))
            handle.flush()

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the whole log atomically (e.g. to add fields computed at the end)."""
        write_atomic(self.path, _lines(records))


def _lines(records: Iterable[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def read_records(path: Path) -> list[dict]:
    """Records of a `.json` list or a `.jsonl` file, either optionally gzipped; errors name file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise SpaceError(f"{path}: not UTF-8 text (byte {error.start}); save the file as UTF-8") from error
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise SpaceError(f"{path}: not a complete gzip file ({error}); decompress it or fetch it again") from error
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise SpaceError(f"{path}: line {line_number} is not valid JSON ({error.msg})") from error
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise SpaceError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(records, list):
        raise SpaceError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


MEASURED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "tokenizers", "numpy")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a measurement depends on (None: not installed)."""
    found = {"python": platform.python_version()}
    for package in MEASURED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def markdown_table(rows: list[dict], columns: list[str], headers: list[str] | None = None) -> str:
    headers = headers or columns
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def device_name(device: str | torch.device | None = None) -> dict:
    """The device a measurement ran on: its type, its name (the GPU's, else the CPU model) and the architecture.
    The CPU model matters: this project's figures move with it (AMD EPYC Zen 4 and Intel Xeon differ)."""
    device = torch.device(device if device is not None else "cpu")
    name = None
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    else:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = name or platform.processor() or None
    return dict(type=device.type, name=name, arch=platform.machine())


def source_commit() -> str | None:
    """The project's git commit, with `+changes` when the checkout differs from it; None where the package is not
    in a checkout of its own (an install inside another project's checkout is not this project's commit)."""
    folder = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if Path(top).resolve() != folder.parent:
            return None
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+changes" if changed else "") if commit else None


def provenance(device: str | torch.device | None = None) -> dict:
    """What and where a measurement was made with: package versions, the device, torch's CPU threads, the date
    (UTC) and the project's commit. Every benchmark report carries one under `provenance`."""
    return dict(versions=versions(), device=device_name(device), threads=torch.get_num_threads(),
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"), commit=source_commit())


class OutputLock:
    """The one writer of an output (see the module docstring): `OutputLock(lock_file, "--output_dir runs/x")`,
    held from `acquire()` (or `with`) to `release()`. `what` names the output in the refusal, flag first."""

    def __init__(self, lock_file: str | Path, what: str):
        self.path, self.what = Path(lock_file), what
        self.handle = None

    @classmethod
    def beside(cls, output: str | Path, flag: str) -> "OutputLock":
        """The lock of a file output: `<output>.lock` next to it."""
        output = Path(output)
        return cls(output.with_name(output.name + ".lock"), f"{flag} {output}")

    def acquire(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+")
        except OSError as error:
            raise SpaceError(f"cannot write {self.what} ({error.strerror}): choose another") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SpaceError(f"{self.what} is in use by another run (pid {holder}); wait for it to finish or choose "
                             f"another {self.what.split()[0]}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
