"""Export a LoRA SAR-SFT run as the compact shipped default model (`space/default_model/`).

    python scripts/export_default_model.py --adapter_dir runs/default_model/sft --output space/default_model

Keeps the adapter config, the SPACE fields (`space.json`, base = the embedded SmolLM2; `--mask_num`
records the default decoding k, chosen by the k sweep, as `decode_mask_num`, and `--cuda_mask_num` the
one used on a GPU as `decode_mask_num_cuda`) and the
adapter weights (LoRA matrices and the trained mask-token rows) cast to float16 safetensors. The
tokenizer is not copied: `space.load_model()` rebuilds the mask tokens from `space.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run  # noqa: E402
from space.models import ADAPTER_FIELDS_FILE, read_space_json, write_space_json  # noqa: E402

WEIGHTS = "adapter_model.safetensors"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter_dir", required=True)
    parser.add_argument("--output", default="space/default_model")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--base_model", default=None, help="recorded base (default: none = the embedded SmolLM2)")
    parser.add_argument("--mask_num", type=int, default=None,
                        help="default decoding k recorded as decode_mask_num (at most the trained mask_num)")
    parser.add_argument("--cuda_mask_num", type=int, default=None,
                        help="default decoding k on a GPU, recorded as decode_mask_num_cuda")
    parser.add_argument("--max_mb", type=float, default=25.0, help="refuse to export a larger adapter")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    source, output = Path(args.adapter_dir), Path(args.output)
    for name in ("adapter_config.json", WEIGHTS, ADAPTER_FIELDS_FILE):
        if not (source / name).is_file():
            raise space.SpaceError(f"{source} has no {name}: export a LoRA run of scripts/train_sft.py")
    tensors = load_file(source / WEIGHTS)
    dtype = getattr(torch, args.dtype)
    tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
    size_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20
    if size_mb > args.max_mb:
        raise space.SpaceError(f"the adapter is {size_mb:.1f} MB in {args.dtype}, over --max_mb {args.max_mb}")
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, output / WEIGHTS)
    config = json.loads((source / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = args.base_model
    if isinstance(config.get("target_modules"), list):
        # peft writes a set in its own order; sort it so a re-export of the same run diffs clean
        config["target_modules"] = sorted(config["target_modules"])
    (output / "adapter_config.json").write_text(json.dumps(config, indent=2))
    fields = read_space_json(source)
    fields["base_model"] = args.base_model
    for flag, key in (("mask_num", "decode_mask_num"), ("cuda_mask_num", "decode_mask_num_cuda")):
        k = getattr(args, flag)
        if k is None:
            continue
        if not 1 <= k <= fields["mask_num"]:
            raise space.SpaceError(f"--{flag} {k} must be between 1 and the trained mask_num {fields['mask_num']}")
        fields[key] = k
    write_space_json(output, fields)
    print(f"exported {len(tensors)} tensors ({size_mb:.1f} MB, {args.dtype}) -> {output}")
    return output


if __name__ == "__main__":
    run(main)
