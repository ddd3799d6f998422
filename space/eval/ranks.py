"""Data-parallel evaluation: which rank this process is, its shard of the prompts, and how ranks agree, fail and
merge their answers.

A launcher (`torchrun`, `accelerate launch`, `deepspeed`) starts one process per device and sets `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`; without them the process is
the only rank and nothing below talks to anyone (a one-process run is the N = 1 case of the same code).

How a run goes (`ShardedRun`), and why:
* **Settings first** (`agree`): every rank sends its flags and library versions to the others before the model
  loads; a rank that differs from rank 0 stops all of them with one line naming the flag.
* **What is answered**: rank 0 opens the run's store (`space.eval.results.ResultStore`: its lock and settings),
  and every rank sends it the part files it finds (`samples.rank<r>.jsonl`, left by a run that stopped, of any
  rank count); rank 0 merges them into `samples.jsonl` and sends every rank the answers, so each (prompt, turn,
  method) counts once whatever the number of ranks before. Each rank then takes every N-th unfinished prompt.
* **No collective inside a timed region**: each rank decodes its shard alone, every method interleaved as in a
  one-process run, and appends each finished prompt to its own part file at once (a killed rank loses only the
  prompt it was on). Between prompt groups a rank reads one key of the process group's store: a rank that failed
  has set it, and the others stop, so the run ends with that rank's error instead of waiting for their shards.
* **At the end** every rank sends its new answers to rank 0, which merges them into `samples.jsonl` and writes
  the summary; the part files go only once that merge is written.

The process group is gloo (CPU tensors and Python objects only), whatever the decoding device: the ranks exchange
only settings and answers. Its timeout is long because rank 0 legitimately waits for the slowest shard; a rank that
raises stops the others through the store key, and a rank that is killed makes the launcher stop the others.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import space
from space.errors import SpaceError
from space.eval import results
from space.eval.datasets import EvalPrompt
from space.io import JsonlLog, versions

FAILED_KEY = "space_eval/failed"
WAIT = timedelta(days=7)  # the longest a rank waits for the others' shards (see the module docstring)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ranks of a launch (`from_env`)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> "Ranks":
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError as error:
            raise SpaceError(f"the launcher's RANK / WORLD_SIZE / LOCAL_RANK are not whole numbers ({error})") from None
        if not 0 <= rank < world or not 0 <= local_rank < local_world:
            raise SpaceError(f"RANK {rank} of WORLD_SIZE {world} (LOCAL_RANK {local_rank} of {local_world}) is not "
                             "a valid launch: start the script with torchrun, accelerate launch or deepspeed")
        return cls(rank, world, local_rank, local_world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def recorded(self) -> int | None:
        """The rank each answer records: None for a one-process run, whose answers carry none."""
        return self.rank if self.world > 1 else None

    def device(self, requested: str) -> str:
        """The device this rank decodes on: with several ranks on a node, `cuda`/`auto` (with CUDA) is
        `cuda:<local rank>`, and on the CPU the node's cores are split between its ranks."""
        if self.local_world == 1:
            return requested
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested.startswith("cuda"):
            if requested != "cuda":
                raise SpaceError(f"--device {requested} with {self.local_world} ranks on this node would put "
                                 "every rank on one GPU; pass --device cuda (rank r uses cuda:<local rank>)")
            return f"cuda:{self.local_rank}"
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.local_world))
        return requested


@contextmanager
def process_group(ranks: Ranks):
    """The gloo group of a launch with several ranks, for the length of the `with` (nothing for one rank)."""
    if ranks.world == 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world, timeout=WAIT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_gather(ranks: Ranks, value) -> list:
    """Every rank's `value`, in rank order, on every rank."""
    if ranks.world == 1:
        return [value]
    gathered = [None] * ranks.world
    dist.all_gather_object(gathered, value)
    return gathered


def from_main(ranks: Ranks, value):
    """Rank 0's `value` on every rank."""
    if ranks.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(ranks: Ranks, settings: dict) -> None:
    """One line, on every rank, when any rank's `settings` (flag -> value; `version:<library>` -> version) differ
    from rank 0's: ranks that disagree would merge answers to different questions."""
    every = all_gather(ranks, settings)
    for rank, theirs in enumerate(every[1:], start=1):
        names = sorted(name for name in set(every[0]) | set(theirs) if every[0].get(name) != theirs.get(name))
        if names:
            shown = "; ".join(_difference(name, every[0].get(name), theirs.get(name), rank) for name in names[:3])
            raise SpaceError(f"rank {rank} was started with other settings than rank 0 ({shown}): start every rank "
                             "with the same command, libraries and files")


def load_agreed(ranks: Ranks, args):
    """`(model, tokenizer)` of `args` (`llm_dir`, `adapter`, `dtype`, `device`) on this rank's device, once every rank
    has shown the same flags and libraries (before loading) and the same model (after)."""
    agree(ranks, launch_settings(args))
    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype,
                                        device=ranks.device(args.device))
    agree(ranks, {"model": model_fingerprint(model)})
    return model, tokenizer


def launch_settings(args) -> dict:
    """What every rank must share before loading: its flags (a dataclass of them) and its libraries' versions."""
    flags = asdict(args) if is_dataclass(args) else dict(args)
    return {**flags, **{f"version:{name}": version for name, version in versions().items()}}


def model_fingerprint(model) -> str:
    """A short digest of a loaded model: its config, its parameters' names and shapes, and the first values of each
    (exact bytes: two ranks that read different files of the same name differ here)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, parameter in model.named_parameters():
        digest.update(f"{name}{tuple(parameter.shape)}{parameter.dtype}".encode())
        digest.update(parameter.detach().reshape(-1)[:16].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def per_rank(records: list[dict]) -> list[dict]:
    """Each rank's share of a data-parallel run's answers: prompts, and tokens per second per method (its own
    device's throughput, beside the merged figures). Empty for a run whose answers carry no rank."""
    if not any("rank" in r for r in records):
        return []
    table = []
    for rank in sorted({r.get("rank") for r in records}, key=lambda value: (value is None, value)):
        mine = [r for r in records if r.get("rank") == rank]
        row = {"rank": rank, "prompts": len({r["id"] for r in mine})}
        for method in dict.fromkeys(r["method"] for r in mine if "seconds" in r):  # a quality run times nothing
            answers = [r for r in mine if r["method"] == method]
            seconds = sum(r["seconds"] for r in answers)
            row[f"{method} tok/s"] = round(sum(len(r["ids"]) for r in answers) / seconds, 2) if seconds else None
        table.append(row)
    return table


def _difference(name: str, main, theirs, rank: int) -> str:
    label = name.split(":", 1)[1] if name.startswith("version:") else f"--{name}"
    return f"{label} {main} on rank 0, {theirs} on rank {rank}"


class PartStore:
    """One rank's answers while several ranks run: the answers every rank had at the start (read only) and this
    rank's new ones, appended to its part file as soon as a prompt is answered. The interface of
    `results.ResultStore` that the answering loops use (`records`, `done_ids`, `add_prompt`)."""

    def __init__(self, path: Path, found: list[dict]):
        self.log = JsonlLog(path)
        self.found = found
        self.new: list[dict] = []

    def records(self) -> list[dict]:
        renewed = {r["id"] for r in self.new}
        return [r for r in self.found if r["id"] not in renewed] + self.new

    def done_ids(self, prompts: list[EvalPrompt], methods: list[str]) -> set[str]:
        return results.complete_ids(self.records(), prompts, methods)

    def add_prompt(self, prompt_id: str, records: list[dict]) -> None:
        self.new = [r for r in self.new if r["id"] != prompt_id] + records
        self.log.append(records)


class ShardedRun:
    """One evaluation run across the ranks of a launch; `with ShardedRun(...) as run:` on every rank.

    Inside: `run.store` takes this rank's answers, `run.shard(prompts, methods)` says which prompts are this
    rank's, `run.should_stop()` (between prompt groups) whether another rank failed, `run.collect()` (every rank,
    once) gathers the answers into rank 0's store (`run.main_store`) and returns them there, and
    `run.finish(value)` hands rank 0's value (the summary) to every rank. An exception on any rank ends the run on
    every rank with that rank's error; answers already finished are kept for the resume.
    """

    def __init__(self, ranks: Ranks, directory: str | Path, config: dict, overwrite: bool = False):
        self.ranks, self.dir, self.config, self.overwrite = ranks, Path(directory), config, overwrite
        self.main_store: results.ResultStore | None = None
        self.store = None
        self._phase = "opening"

    def __enter__(self) -> "ShardedRun":
        error, found = None, []
        if self.ranks.main:
            try:
                self.main_store = results.ResultStore(self.dir, self.config, overwrite=self.overwrite)
            except Exception as raised:  # noqa: BLE001 (sent to every rank, raised on every rank)
                error = f"{type(raised).__name__}: {raised}" if not isinstance(raised, SpaceError) else str(raised)
        leftovers = results.part_paths(self.dir)
        parts = [record for path in leftovers for record in JsonlLog(path).read()]
        gathered = all_gather(self.ranks, (error, parts))
        answers = None
        if self.ranks.main and error is None:
            if not self.main_store.replaced:  # parts of a replaced run answered other settings
                found = results.first_of_each([r for _, part in gathered for r in part])
                self.main_store.add_answers(_not_stored(found, self.main_store.records()))
            answers = self.main_store.records()
        error = next((e for e, _ in gathered if e is not None), None)
        answers = from_main(self.ranks, answers)
        if error is not None:
            self._close()
            raise SpaceError(error)
        for path in leftovers:  # merged (or discarded with a replaced run) by rank 0
            path.unlink(missing_ok=True)
        if self.ranks.world == 1:
            self.store = self.main_store
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.store = PartStore(results.part_path(self.dir, self.ranks.rank), answers)
        self._phase = "answering"
        return self

    def shard(self, prompts: list[EvalPrompt], methods: list[str]) -> list[EvalPrompt]:
        """This rank's part of the unfinished prompts (every N-th, in order), after the prompts every rank had
        finished at the start (whose stored answers carry a method's state into the next prompt)."""
        done = self.store.done_ids(prompts, methods)
        mine = {p.id for p in [p for p in prompts if p.id not in done][self.ranks.rank::self.ranks.world]}
        return [p for p in prompts if p.id in done or p.id in mine]

    def should_stop(self) -> bool:
        """Whether another rank has failed (read between prompt groups, never inside a timed decode)."""
        return self.ranks.world > 1 and dist.distributed_c10d._get_default_store().check([FAILED_KEY])

    def collect(self, error: str | None = None) -> list[dict] | None:
        """Every rank's new answers merged into rank 0's store (its `samples.jsonl`); returns all answers on rank 0
        and None elsewhere. Raises on every rank when any rank failed (`error`: this rank's), after keeping what
        every rank answered."""
        self._phase = "failed"  # until it returns: a raise here has been seen by every rank
        if self.ranks.world == 1:
            if error is not None:
                raise SpaceError(error)
            self._phase = "collected"
            return self.main_store.records()
        statuses = all_gather(self.ranks, error)
        parts = [None] * self.ranks.world if self.ranks.main else None
        dist.gather_object(self.store.new, parts, dst=0)
        unmerged = None
        if self.ranks.main:
            try:
                self.main_store.add_answers([r for part in parts for r in part])
            except Exception as raised:  # noqa: BLE001 (the parts stay, so nothing is lost)
                unmerged = f"rank 0 could not merge the ranks' answers ({raised}); they stay in the part files"
        unmerged = from_main(self.ranks, unmerged)
        if unmerged is None:
            self.store.log.path.unlink(missing_ok=True)
        failed = next(((rank, e) for rank, e in enumerate(statuses) if e is not None), None)
        if failed is not None:
            raise SpaceError(f"rank {failed[0]} failed: {failed[1]} (the answers every rank finished are kept: "
                             "the same command resumes)")
        if unmerged is not None:
            raise SpaceError(unmerged)
        self._phase = "collected"
        return self.main_store.records() if self.ranks.main else None

    def finish(self, value=None, error: str | None = None):
        """Rank 0's `value` (or its `error`, raised) on every rank."""
        self._phase = "finished"
        outcome = from_main(self.ranks, (value, error))
        if outcome[1] is not None:
            raise SpaceError(outcome[1] if self.ranks.main else f"rank 0 failed: {outcome[1]}")
        return outcome[0]

    def __exit__(self, kind, raised, traceback) -> None:
        """An exception while answering reaches the other ranks (they stop at their next prompt group and the run
        ends with it); one on rank 0 after `collect` reaches the ranks waiting in `finish`. The exception itself
        goes on."""
        try:
            if raised is None:
                return
            message = str(raised) if isinstance(raised, SpaceError) else f"{type(raised).__name__}: {raised}"
            if self._phase == "answering":
                if self.ranks.world > 1:
                    dist.distributed_c10d._get_default_store().set(FAILED_KEY, message)
                try:
                    self.collect(error=message)
                except SpaceError:
                    pass  # every rank now knows; this rank's own exception is the clearer one
            elif self._phase == "collected" and self.ranks.main:
                try:
                    self.finish(error=message)
                except SpaceError:
                    pass
        finally:
            self._close()

    def _close(self) -> None:
        if self.main_store is not None:
            self.main_store.close()


def _not_stored(found: list[dict], stored: list[dict]) -> list[dict]:
    keys = {(r["id"], r["turn"], r["method"]) for r in stored}
    return [r for r in found if (r["id"], r["turn"], r["method"]) not in keys]
