"""What leaves a LoRA SAR-SFT run: the adapter folded into its base, or the adapter exported as the shipped model.

A gated adapter (`space.adapters.gated`) is exported the same way (its `gated_adapter.safetensors` and `space.json`)
and is never merged: merged, it would change every token.

`merge_adapter` saves a plain model (merged weights, tokenizer with the mask tokens, SPACE fields in
its config), so `space.decode` needs no flags. `export_adapter` writes the compact form kept in
`space/default_model/`: the adapter config, the SPACE fields (`space.json`, with the default decoding
k on CPU and on a GPU) and the adapter weights (LoRA matrices and trained mask-token rows) cast to
float16 (and a sampler head, `space.adapters.sampler_head`, when `space.json` names one); the tokenizer is not copied,
since `space.load_model()` rebuilds the mask tokens from `space.json`. A merged model has no place for a sampler
head: merging one warns.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

import space
from space.adapters import addons
from space.adapters.gated import GATED_WEIGHTS
from space.adapters.sampler_head import HEAD_FIELD, HEAD_WEIGHTS
from space.cli import parse_flags, require_counts
from space.errors import SpaceError, SpaceWarning
from space.io import write_atomic
from space.models import (
    ADAPTER_FIELDS_FILE,
    adapter_base,
    check_adapter_dir,
    is_gated_dir,
    read_space_json,
    unwrap,
    write_space_json,
)

WEIGHTS = "adapter_model.safetensors"


@dataclass
class MergedModel:
    path: Path
    adapter_dir: Path
    base: str | None

    def __str__(self) -> str:
        return f"merged {self.adapter_dir} into {self.base or 'the embedded default'} -> {self.path}"


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None,
                  dtype: str = "float32") -> MergedModel:
    """Fold the adapter into `base` (default: the base recorded beside the adapter) and save the result."""
    adapter_dir = Path(adapter_dir)
    if is_gated_dir(adapter_dir):
        raise SpaceError(f"{adapter_dir} is a gated adapter: merged, it would act on every token and the output "
                         "would no longer be the base model's; load the adapter directory itself instead")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SpaceError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)")
    base = base if base is not None else adapter_base(adapter_dir)
    model, tokenizer = space.load_model(base, adapter=adapter_dir, dtype=dtype, merge_adapter=True)
    output = Path(output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    # not a module of the model: a merged model directory has no place for it
    if addons(unwrap(model)).sampler_head is not None:
        warnings.warn(f"{adapter_dir}'s sampler head is not part of the merged model in {output}; decode with the "
                      "adapter directory to use it", SpaceWarning, stacklevel=2)
    return MergedModel(output, adapter_dir, base)


@dataclass
class ExportArguments:
    """The flags of `scripts/export_default_model.py`."""

    adapter_dir: str
    output: str = "space/default_model"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    base_model: str | None = field(default=None, metadata={
        "help": "recorded base (default: none = the embedded SmolLM2)"})
    mask_num: int | None = field(default=None, metadata={
        "help": "default decoding k recorded as decode_mask_num (at most the trained mask_num)"})
    cuda_mask_num: int | None = field(default=None, metadata={
        "help": "default decoding k on a GPU, recorded as decode_mask_num_cuda"})
    max_mb: float = field(default=25.0, metadata={"help": "refuse to export a larger adapter"})


def parse_export_args(argv: list[str] | None = None) -> ExportArguments:
    (args,) = parse_flags((ExportArguments,), argv, "export_default_model.py",
                          description="Export a LoRA SAR-SFT run as the compact shipped default model.")
    require_counts(args, ("mask_num", "cuda_mask_num"))  # the upper bound, the trained width, is read at export
    if not 0 < args.max_mb < math.inf:
        raise SpaceError(f"--max_mb must be a size in MB above 0 (got {args.max_mb:g})")
    return args


@dataclass
class MergeArguments:
    """The flags of `scripts/merge_lora.py`."""

    adapter_dir: str = field(metadata={"help": "the LoRA adapter directory scripts/train_sft.py saved"})
    output_dir: str = field(metadata={"help": "where the merged model goes"})
    base: str | None = field(default=None, metadata={"help": "base model (default: the one recorded with the adapter)"})
    dtype: str = "float32"


def parse_merge_args(argv: list[str] | None = None, description: str | None = None) -> MergeArguments:
    (args,) = parse_flags((MergeArguments,), argv, "merge_lora.py", description)
    return args


@dataclass
class ExportedAdapter:
    path: Path
    tensors: int
    size_mb: float
    dtype: str

    def __str__(self) -> str:
        return f"exported {self.tensors} tensors ({self.size_mb:.1f} MB, {self.dtype}) -> {self.path}"


def export_adapter(args: ExportArguments) -> ExportedAdapter:
    """Write the adapter of `args.adapter_dir` in `args.dtype`, its config and its SPACE fields to `args.output`."""
    source, output = Path(args.adapter_dir), Path(args.output)
    gated = is_gated_dir(source)
    weights = GATED_WEIGHTS if gated else WEIGHTS
    for name in ((weights, ADAPTER_FIELDS_FILE) if gated else ("adapter_config.json", WEIGHTS, ADAPTER_FIELDS_FILE)):
        if not (source / name).is_file():
            raise SpaceError(f"{source} has no {name}: export a LoRA or gated_lora run of scripts/train_sft.py")
    check_adapter_dir(source)
    fields = read_space_json(source)
    fields["base_model"] = args.base_model
    for flag, key in (("mask_num", "decode_mask_num"), ("cuda_mask_num", "decode_mask_num_cuda")):
        k = getattr(args, flag)
        if k is None:
            continue
        if not 1 <= k <= fields["mask_num"]:
            raise SpaceError(f"--{flag} {k} must be between 1 and the trained mask_num {fields['mask_num']}")
        fields[key] = k
    tensors = load_file(source / weights)
    dtype = getattr(torch, args.dtype)
    tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    head = source / HEAD_WEIGHTS if fields.get(HEAD_FIELD) is not None else None  # a sampler head goes with its adapter
    size_mb += head.stat().st_size / 2**20 if head is not None else 0
    if size_mb > args.max_mb:
        raise SpaceError(f"the adapter is {size_mb:.1f} MB in {args.dtype}, over --max_mb {args.max_mb}")
    # every check has passed: only now is the output touched
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, output / weights)
    # an earlier export of the other kind
    for stale in ((WEIGHTS, "adapter_config.json") if gated else (GATED_WEIGHTS,)):
        (output / stale).unlink(missing_ok=True)
    if head is not None and head.resolve() != (output / HEAD_WEIGHTS).resolve():
        shutil.copyfile(head, output / HEAD_WEIGHTS)
    else:
        (output / HEAD_WEIGHTS).unlink(missing_ok=True)
    if not gated:
        config = json.loads((source / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = args.base_model
        if isinstance(config.get("target_modules"), list):
            # peft writes a set in its own order; sort it so a re-export of the same run diffs clean
            config["target_modules"] = sorted(config["target_modules"])
        write_atomic(output / "adapter_config.json", json.dumps(config, indent=2))
    write_space_json(output, fields)
    return ExportedAdapter(output, len(tensors), size_mb, args.dtype)
