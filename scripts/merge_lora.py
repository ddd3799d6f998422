"""Fold a LoRA adapter trained by scripts/train_sft.py into its base and save a plain model.

    python scripts/merge_lora.py --adapter_dir out/lora --output_dir out/merged [--base /path/to/base]

The base defaults to the one recorded beside the adapter (`space.json`). The saved directory holds
the merged weights, the tokenizer (with the mask tokens) and the SPACE fields in its config, so
`space.decode` needs no flags. The merge itself is `space.training.export.merge_adapter`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from space.cli import run
from space.training.export import merge_adapter


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--base", default=None, help="base model (default: the one recorded with the adapter)")
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    merged = merge_adapter(args.adapter_dir, args.output_dir, base=args.base, dtype=args.dtype)
    print(merged)
    return merged.path


if __name__ == "__main__":
    run(main)
