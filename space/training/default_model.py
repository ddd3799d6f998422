"""The shipped default model's recipe: self-distillation data, LoRA SAR-SFT, export. One call, resumable.

Steps (each skipped or resumed when its output exists):
1. `make_distill_data`: the base model's greedy answers to the project's prompts (resumed answer by answer);
   one answer in 25 (by a hash of its id) is then held out of training (`held_out.jsonl`) for the masks' accuracy;
2. `train` with `space/configs/default_model/sft.yaml`: gated LoRA SAR-SFT (`space.adapters.gated`) in multi-block mode,
   resumed from the newest complete checkpoint if one exists (one half-written by a kill is skipped), skipped
   once finished;
3. `export_adapter`: float16 adapter + SPACE fields into `space/default_model/`.

The run can be done in pieces: stop it at any time (Ctrl-C, a kill) and run the same command again. Each
piece's wall time is added to its step in the log, so `recipe_log.json` holds the whole run's cost.

Each step is given the flags of its script, and `recipe_log.json` in the work dir records them with the
step's wall time, so `python scripts/<step>.py <command>` repeats a step exactly. The log also records the
settings that shape the result (`SETTINGS`) when the work dir is first used; a rerun with other ones is
refused, naming the flag, so a work dir never mixes two runs. Every flag is checked before the first step.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from space.cli import parse_flags, require_counts
from space.errors import SpaceError
from space.io import OutputLock, read_records, shipped, write_atomic, write_json
from space.models import SHIPPED_MODEL_DIR, is_adapter_dir
from space.training.arguments import CONFIG_SUFFIXES, parse_train_args
from space.training.checkpoints import last_complete_checkpoint
from space.training.distill import FAMILIES, check_distill_args, make_distill_data, parse_distill_args
from space.training.distill_prompts import root_id
from space.training.export import export_adapter, parse_export_args
from space.training.recipe import check_arguments, train

CONFIG = shipped("configs", "default_model", "sft.yaml")
DECODE_MASK_NUM = 3  # chosen by the k sweeps on the shipped model (docs/benchmarks.md): this CPU
DECODE_MASK_NUM_CUDA = 6  # and an H100, where a wider step costs about what a narrow one does
# the flags that shape the data and the trained adapter (batch size and the export's k do not)
HELD_OUT_EVERY = 25  # one answer in 25 is held out of training
SETTINGS = ("model", "families", "limit", "max_new_tokens", "config", "max_steps", "train_args")


@dataclass
class DefaultModelArguments:
    """The flags of `scripts/make_default_model.py`."""

    model: str | None = field(default=None, metadata={
        "help": "base model (default: the embedded SmolLM2-135M-Instruct)"})
    work_dir: str = "runs/default_model"
    export_dir: str = str(SHIPPED_MODEL_DIR)
    config: str = str(CONFIG)
    families: str = field(default=",".join(FAMILIES), metadata={
        "help": "prompt families of the self-distillation data"})
    limit: int | None = field(default=None, metadata={"help": "prompts for the self-distillation data"})
    max_new_tokens: int = field(default=256, metadata={"help": "answer length of the self-distillation data"})
    batch_size: int = field(default=32, metadata={"help": "generation batch size"})
    max_steps: int | None = field(default=None, metadata={"help": "override the config's training steps"})
    decode_mask_num: int = field(default=DECODE_MASK_NUM, metadata={
        "help": "default decoding k recorded with the export (chosen by the k sweep in docs/benchmarks.md)"})
    decode_mask_num_cuda: int = field(default=DECODE_MASK_NUM_CUDA, metadata={
        "help": "default decoding k on a GPU recorded with the export"})
    train_args: str = field(default="", metadata={"help": "extra train_sft.py flags, space separated"})


def parse_default_model_args(argv: list[str] | None = None) -> DefaultModelArguments:
    (args,) = parse_flags((DefaultModelArguments,), argv, "make_default_model.py",
                          description="Remake the shipped default model: self-distillation data, LoRA SAR-SFT, export.")
    return args


def make_default_model(args: DefaultModelArguments) -> Path:
    """Run (or resume) the three steps in `args.work_dir`; returns the export folder."""
    default = "leave it out for the default"
    require_counts(args, ("limit", "max_new_tokens", "batch_size", "max_steps"),
                   hints={"limit": default, "max_steps": default})
    work = Path(args.work_dir)
    data, output = work / "distill.jsonl", work / "sft"
    distill = ["--output", str(data), "--max_new_tokens", str(args.max_new_tokens),
               "--batch_size", str(args.batch_size), "--families", args.families]
    distill += (["--model", args.model] if args.model else []) + (["--limit", str(args.limit)] if args.limit else [])
    train_data, held_out = work / "train.jsonl", work / "held_out.jsonl"
    training = [args.config, "--dataset", str(train_data), "--output_dir", str(output)]
    training += ["--model_name_or_path", args.model] if args.model else []
    training += ["--max_steps", str(args.max_steps)] if args.max_steps else []
    training += args.train_args.split()
    if work.exists() and not work.is_dir():
        raise SpaceError(f"--work_dir {work} is a file; name a directory")
    export = ["--adapter_dir", str(output), "--output", args.export_dir, "--mask_num", str(args.decode_mask_num),
              "--cuda_mask_num", str(args.decode_mask_num_cuda)]
    require_counts(args, ("decode_mask_num", "decode_mask_num_cuda"))
    if not (Path(args.config).is_file() and args.config.endswith(CONFIG_SUFFIXES)):
        raise SpaceError(f"--config {args.config} not found: pass a train_sft.py .yaml/.json config")
    check_distill_args(parse_distill_args(distill))  # the steps' own checks, before hours of work
    parse_export_args(export)
    model_args, data_args, finetune_args, training_args = parse_train_args(training)
    check_arguments(data_args, finetune_args, model_args, training_args)

    log_path, settings = work / "recipe_log.json", recipe_settings(args)

    def read_log() -> dict:
        log = json.loads(log_path.read_text()) if log_path.is_file() else {}
        check_recipe_settings(log.get("settings"), settings, log_path)
        return log

    read_log()  # a work dir made otherwise is refused before anything there is touched
    with OutputLock(work / "recipe.lock", f"--work_dir {work}"):  # one recipe per work dir
        log = read_log()  # again, now that no other run can write it
        log["settings"] = settings
        write_json(log_path, log)

        def step(name, function, command):
            print(f"[recipe] {name}: {' '.join(command)}", file=sys.stderr)
            start, finished = time.perf_counter(), False
            try:
                with terminate_as_interrupt():
                    result = function(command)
                finished = True
            finally:  # an interrupted piece's time counts too: the total is the whole run's, done in pieces
                spent = round(time.perf_counter() - start + log.get(name, {}).get("seconds", 0), 1)
                log[name] = dict(command=command, seconds=spent, finished=finished)
                write_json(log_path, log)
            return result

        step("distill", lambda flags: make_distill_data(parse_distill_args(flags)), distill)
        kept, left_out = split_held_out(data, train_data, held_out)
        print(f"[recipe] {kept} answers to train on, {left_out} held out for the mask accuracy ({held_out})",
              file=sys.stderr)

        if "train" in log and log["train"].get("finished", True) and is_adapter_dir(output):
            print(f"[recipe] train: finished in an earlier run ({output}), skipped", file=sys.stderr)
        else:
            last, _ = last_complete_checkpoint(output)
            # the sft folder is the recipe's own: without a complete checkpoint, what is there is a start cut short
            training += ["--resume_from_checkpoint", "last"] if last else ["--overwrite_output_dir", "true"]
            step("train", train, training)

        exported = step("export", lambda flags: export_adapter(parse_export_args(flags)), export)
        print(exported)
        total = sum(entry["seconds"] for key, entry in log.items() if key in ("distill", "train"))
        print(f"[recipe] data + training took {total / 60:.1f} min; model exported to {exported.path}", file=sys.stderr)
        return exported.path


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM (a plain `kill`, a scheduler's stop) raises KeyboardInterrupt like Ctrl-C, so the step's time is
    still written; Python's default would end the process without unwinding. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_held_out(record_id: str) -> bool:
    """A fixed share of the answers is kept out of training, to measure the masks' accuracy on samples they never
    saw (`scripts/eval_mask_accuracy.py`). Chosen by a hash of the root id (never by order or by a rerun), so a
    held-out answer's summaries, questions, translations and chats, which quote it, are held out with it."""
    return zlib.crc32(root_id(record_id).encode()) % HELD_OUT_EVERY == 0


def split_held_out(data: Path, train_data: Path, held_out: Path) -> tuple[int, int]:
    """`data`'s answers into the training file and the held-out file; returns their sizes."""
    records = read_records(data)
    kept = [record for record in records if not is_held_out(record["id"])]
    left_out = [record for record in records if is_held_out(record["id"])]
    for path, chosen in ((train_data, kept), (held_out, left_out)):
        write_atomic(path, "".join(json.dumps(record) + "\n" for record in chosen))
    return len(kept), len(left_out)


def recipe_settings(args: DefaultModelArguments) -> dict:
    """`SETTINGS` of this run, local paths resolved (so `./base` and `base` agree)."""
    settings = {name: getattr(args, name) for name in SETTINGS}
    for name in ("model", "config"):
        if settings[name] and Path(settings[name]).exists():
            settings[name] = str(Path(settings[name]).resolve())
    return settings


def check_recipe_settings(recorded: dict | None, settings: dict, log_path: Path) -> None:
    """A work dir first used with other settings is refused, naming the first flag that differs."""
    if recorded is None:  # a new work dir, or one from before the settings were recorded
        return
    for name in SETTINGS:
        if name in recorded and recorded[name] != settings[name]:  # a setting added later: not recorded, not checked
            raise SpaceError(f"--{name} {settings[name]}: {log_path.parent} was made with "
                             f"--{name} {recorded.get(name)} ({log_path.name}); pass the same flags to resume it, or "
                             "another --work_dir to start afresh")
