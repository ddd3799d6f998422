"""What a SAR-SFT run is given: its argument dataclasses and the one parser for flags, config files and dicts.

`parse_train_args(argv)` reads the flags of `scripts/train_sft.py` with the one flag parser of every entry point
(`space.cli.parse_flags`); a `.yaml`/`.json` first argument is a config file whose keys are flag names, and
flags after it win (`configs/sft/`, `space/configs/default_model/`).

Transformers' training arguments import peft and accelerate, so they are imported only when parsing:
`import space.training` stays light.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from space.cli import parse_flags
from space.errors import SpaceError

if TYPE_CHECKING:
    from transformers import Seq2SeqTrainingArguments

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
# Training arguments transformers renamed (5.24: `gradient_checkpointing*` became `activation_checkpointing*`; the old
# names warn and go in v6). Recipes and flags keep the original SPACE names; they reach the installed ones.
RENAMED_TRAINING_ARGUMENTS = {"gradient_checkpointing": "activation_checkpointing",
                              "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}
AUTO_IDS = ("mask_id", "sat_id")  # `auto`: the model's recorded id, else the first free one (argparse takes ints only)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "HF dir, hub name or .gguf (default: the embedded SmolLM2-135M base)"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "sdpa or eager; flash_attention_2 and others only in the truncating mode "
                "(the other modes need a 4D mask)"})


@dataclass
class DataArguments:
    dataset: str = field(default="lima", metadata={"help": "comma list of registry names or .json/.jsonl files"})
    dataset_dir: str = field(default="data", metadata={"help": "folder holding local dataset files"})
    template: str = field(default="default", metadata={"help": "default, vicuna or chat_template"})
    cutoff_len: int = field(default=1024, metadata={"help": "max tokens per sample (mask blocks included)"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N records"})
    overwrite_cache: bool = field(default=False, metadata={
        "help": "accepted for compatibility; samples are always rebuilt"})
    mask_num: int = field(default=5, metadata={"help": "k: future tokens predicted in parallel (0 = plain SFT)"})
    mask_id: int | None = field(default=None, metadata={
        "help": "mask token id, or auto (default: the model's, else first free id)"})
    mask_prob: float = field(default=0.5, metadata={"help": "probability that a sample gets mask blocks"})
    mask_random: bool = field(default=False, metadata={"help": "efficient mode: block size uniform in 1..k"})
    mask_efficient_train: bool = field(default=False, metadata={
        "help": "multi-block mode instead of the faithful truncating mode"})
    mask_blocks: int = field(default=4, metadata={"help": "efficient mode: mask blocks per sample"})
    mask_diff: bool = field(default=False, metadata={"help": "distinct ids mask_id + j per slot"})
    mask_loss_weight: float = field(default=1.0, metadata={"help": "loss weight of the mask (or SAT) predictions"})
    sdsat: bool = field(default=False, metadata={
        "help": "SDSAT sample mode: adaptive-token spans instead of SPACE masks"})
    sat_num: int = field(default=5, metadata={
        "help": "sdsat: longest span K_train (span sizes uniform in 1..K); the decoding k"})
    sat_id: int | None = field(default=None, metadata={
        "help": "sdsat: adaptive token id, or auto (default: the model's, else a new token)"})
    sat_every: int = field(default=64, metadata={"help": "sdsat: one span per this many real tokens"})


@dataclass
class FinetuningArguments:
    stage: str = field(default="sft", metadata={"help": "only 'sft' is implemented"})
    finetuning_type: str = field(default="full", metadata={
        "help": "full, lora, or gated_lora (LoRA active at mask rows only: the base model's output stays exact)"})
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=16.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    plot_loss: bool = field(default=False, metadata={"help": "save training_loss.png in output_dir"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start afresh even if output_dir holds checkpoints (else refuse, or resume)"}
    )


class TrainArguments(NamedTuple):
    """Everything a run is given; unpacks as `model, data, finetuning, training`."""

    model: ModelArguments
    data: DataArguments
    finetuning: FinetuningArguments
    training: Seq2SeqTrainingArguments


def parse_train_args(argv: Sequence[str]) -> TrainArguments:
    """Flags, or a `.yaml`/`.json` config file first and flags after it (the flags win).

    A launcher's `--local_rank=N` (DeepSpeed puts it before the script's own arguments) may precede the file.
    """
    argv = list(argv)
    launcher = argv[:1] if argv and argv[0].startswith("--local_rank=") else []
    flags = argv[len(launcher):]
    if flags and flags[0].endswith(CONFIG_SUFFIXES):
        return train_args_from(read_config(Path(flags[0])), launcher + flags[1:], source=flags[0])
    return train_args_from({}, launcher + flags)


def train_args_from(values: Mapping, flags: Sequence[str] = (), source: str = "train_sft.py") -> TrainArguments:
    """Config values (flag names as keys) as the parser's defaults, then `flags` on top of them.

    HfArgumentParser's own `parse_yaml_file`/`parse_dict` take no flags after the file; as defaults, the
    file's values also get the same conversion as flags (YAML reads `5e-5` as a string, `1` as an int).
    """
    from transformers import Seq2SeqTrainingArguments

    types = (ModelArguments, DataArguments, FinetuningArguments, Seq2SeqTrainingArguments)
    known = {f.name for dataclass_type in types for f in dataclasses.fields(dataclass_type) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpaceError(f"unknown key(s) in {source}: {unknown}; keys are train_sft.py flag names (see --help)")
    renames = {old: new for old, new in RENAMED_TRAINING_ARGUMENTS.items() if new in known}
    defaults = {renames.get(key, key): _auto_id(key, value) for key, value in values.items()}
    flags, auto = _without_auto_ids(_renamed_flags(list(flags), renames))
    parsed = TrainArguments(*parse_flags(types, flags, "train_sft.py", defaults={**defaults, **auto}))
    if parsed.training.deepspeed and not parsed.training.use_cpu and not _cuda_available():
        # DeepSpeed's launcher started one rank per process, but without CUDA and without --use_cpu the Trainer
        # counts a world of one and DeepSpeed refuses its batch size on every rank: train on the CPU ranks
        if "use_cpu" in values or any(flag.split("=")[0] in ("--use_cpu", "--use-cpu") for flag in flags):
            raise SpaceError("--deepspeed without CUDA GPUs trains on the CPU ranks: pass --use_cpu true, not false")
        print("[train_sft] --deepspeed without CUDA GPUs: training on the CPU ranks (--use_cpu true)", file=sys.stderr)
        return train_args_from({**values, "use_cpu": True}, flags, source)
    return parsed


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _renamed_flags(flags: list[str], renames: dict[str, str]) -> list[str]:
    """`flags` with every `--old` (or `--old=value`, `--o-l-d`) of `renames` given under its new name."""
    renamed = []
    for flag in flags:
        name, separator, value = flag.partition("=")
        key = name.removeprefix("--").replace("-", "_") if name.startswith("--") else None
        renamed.append(f"--{renames[key]}{separator}{value}" if key in renames else flag)
    return renamed


def read_config(path: Path) -> dict:
    """A config file's mapping of flag names to values."""
    if not path.is_file():
        raise SpaceError(f"config file not found: {path}")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        import yaml

        values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict):
        raise SpaceError(f"{path}: expected a mapping of flag names to values")
    return values


def _auto_id(key: str, value):
    return None if key in AUTO_IDS and value == "auto" else value


def _without_auto_ids(flags: list[str]) -> tuple[list[str], dict]:
    """`--mask_id auto` / `--sat_id=auto` taken out of the flags and returned as `None` defaults."""
    kept, auto = [], {}
    i = 0
    while i < len(flags):
        name, _, inline = flags[i].partition("=")
        key = name.removeprefix("--").replace("-", "_")
        value = inline if inline else flags[i + 1] if i + 1 < len(flags) else None
        if flags[i].startswith("--") and key in AUTO_IDS and value == "auto":
            auto[key] = None
            i += 1 if inline else 2
            continue
        kept.append(flags[i])
        i += 1
    return kept, auto
