"""What a SAR-SFT run finds in its `--output_dir`, and what it may do there.

A run's output dir holds its `checkpoint-N` folders and, once it finished, the model it saved (weights,
config, tokenizer, `space.json`, trainer state and metrics: `RUN_FILES`). The rules:

* `--resume_from_checkpoint last` takes the newest *complete* checkpoint. A checkpoint is complete when its
  `trainer_state.json` (which the Trainer writes last) parses and every weight, optimizer and RNG file in it
  is whole: a safetensors file as long as its header says, a torch file with its zip directory. A run killed
  while saving leaves a newer incomplete one, which is skipped with a note (and later overwritten when the
  resumed run saves that step again).
* Without `--resume_from_checkpoint`, a dir holding checkpoints or a finished model is refused;
  `--overwrite_output_dir` starts clean instead: it removes the `checkpoint-N` folders and the `RUN_FILES`
  of the earlier run, and nothing else (a user's own files stay). The removal happens only after every
  check has passed, just before training starts, so a refused run loses nothing. Removing them (rather than
  refusing while old checkpoints exist) is what the flag promises, and it is the only way the recipe
  configs that set it can be rerun; leaving them would let a later `--resume_from_checkpoint last` resume
  the earlier run's newest checkpoint.
* `--resume_from_checkpoint` wins over `--overwrite_output_dir` (a config file may set the latter): the
  resumed run replaces the finished model at its end.

Every check here runs before the model is loaded.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from space.errors import SpaceError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers' PREFIX_CHECKPOINT_DIR folders
# What `train` writes beside the checkpoints: model or adapter, tokenizer, SPACE fields, trainer state, metrics,
# the loss plot. peft's README.md model card is left alone: it cannot be told from a user's README.
RUN_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json", "adapter_config.json",
    "adapter_model.safetensors", "adapter_model.bin", "gated_adapter.safetensors", "space.json", "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
    "vocab.json", "merges.txt", "training_args.bin", "trainer_state.json", "train_results.json", "all_results.json",
    "eval_results.json", "training_loss.png",
)
TORCH_FILES = ("*.pt", "*.pth", "*.bin")  # torch.save's zip format: a truncated file has no zip directory


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [path for path in output_dir.iterdir() if CHECKPOINT.match(path.name) and path.is_dir()]
    return sorted(found, key=lambda path: int(CHECKPOINT.match(path.name).group(1)))


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` cannot be resumed (a run killed while saving it), or None when it is complete."""
    checkpoint = Path(checkpoint)
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        if "global_step" not in json.loads(state.read_text()):
            return "trainer_state.json has no global_step"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is truncated"
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file():
            continue
        if path.name.endswith(".safetensors") and not safetensors_whole(path):
            return f"{path.relative_to(checkpoint)} is truncated"
        if any(fnmatch(path.name, pattern) for pattern in TORCH_FILES) and not zipfile.is_zipfile(path):
            return f"{path.relative_to(checkpoint)} is truncated"
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError):
            return "model.safetensors.index.json is truncated"
        missing = sorted(shard for shard in shards if not (checkpoint / shard).is_file())
        if missing:
            return f"shard {missing[0]} is missing"
    return None


def safetensors_whole(path: Path) -> bool:
    """True when a safetensors file's header parses and the file is as long as the header says."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if 8 + header_size > size:
                return False
            header = json.loads(handle.read(header_size))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return False
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return size == 8 + header_size + max(ends, default=0)


def last_complete_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint (None if there is none) and the newer incomplete ones, with why."""
    skipped = []
    for checkpoint in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint, skipped
        skipped.append((checkpoint, problem))
    return None, skipped


def run_files(output_dir: str | Path) -> list[Path]:
    """The files of a finished run in `output_dir` (`RUN_FILES`), config and weights first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    rank = {path: next((i for i, pattern in enumerate(RUN_FILES) if fnmatch(path.name, pattern)), None)
            for path in output_dir.iterdir() if path.is_file()}
    return sorted((path for path, i in rank.items() if i is not None), key=lambda path: (rank[path], path.name))


@dataclass
class OutputPlan:
    """What a run does with its output dir: the checkpoint it resumes (or None) and what it removes first."""

    resume: str | None = None
    stale: list[Path] = field(default_factory=list)  # the earlier run's checkpoints and files (--overwrite_output_dir)

    def clear(self) -> None:
        """Remove the earlier run's checkpoints and files (only them); call it once every check has passed."""
        for path in self.stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)  # another rank's process may be removing it too
            else:
                path.unlink(missing_ok=True)


def plan_output_dir(output_dir: str | Path, resume_from_checkpoint: str | None, overwrite: bool) -> OutputPlan:
    """Check `--output_dir` and `--resume_from_checkpoint` against what the dir holds; touches nothing."""
    output_dir = Path(output_dir)
    blocking = next((parent for parent in (output_dir, *output_dir.parents) if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise SpaceError(f"--output_dir {output_dir}: {blocking} is a file; name a directory "
                         "(it is created if missing)")
    value = resume_from_checkpoint
    if value is None:
        return _fresh_start(output_dir, overwrite)
    if str(value).lower() in ("last", "true"):
        last, skipped = last_complete_checkpoint(output_dir)
        if last is None:
            if skipped:
                names = ", ".join(f"{path.name} ({problem})" for path, problem in skipped)
                raise SpaceError(f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint "
                                 f"(incomplete: {names}; a run interrupted while saving); drop the flag and pass "
                                 "--overwrite_output_dir to start afresh")
            raise SpaceError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir}")
        for path, problem in skipped:
            print(f"[train_sft] skipping {path} ({problem}: interrupted while saving)", file=sys.stderr)
        return OutputPlan(resume=str(last))
    if not Path(value).is_dir():
        raise SpaceError(f"--resume_from_checkpoint: {value} is not a checkpoint folder")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise SpaceError(f"--resume_from_checkpoint {value} is incomplete ({problem}: interrupted while saving); "
                         "pass --resume_from_checkpoint last to take the newest complete checkpoint")
    return OutputPlan(resume=str(value))


def _fresh_start(output_dir: Path, overwrite: bool) -> OutputPlan:
    checkpoints, files = checkpoint_dirs(output_dir), run_files(output_dir)
    if overwrite:
        return OutputPlan(stale=[*checkpoints, *files])
    if checkpoints:
        last, skipped = last_complete_checkpoint(output_dir)
        if last is None:
            raise SpaceError(f"{output_dir} holds only incomplete checkpoints "
                             f"({', '.join(p.name for p, _ in skipped)}) "
                             "of an interrupted run: pass --overwrite_output_dir to start afresh")
        raise SpaceError(f"{output_dir} already holds checkpoints (newest complete: {last.name}): pass "
                         "--resume_from_checkpoint last to continue, or --overwrite_output_dir to start afresh")
    if files:
        names = ", ".join(path.name for path in files[:3]) + (", ..." if len(files) > 3 else "")
        raise SpaceError(f"{output_dir} already holds a trained model ({names}): pass --overwrite_output_dir to "
                         "replace it, or choose another --output_dir")
    return OutputPlan()
