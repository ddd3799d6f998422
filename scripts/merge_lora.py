"""Fold a LoRA adapter trained by scripts/train_sft.py into its base and save a plain model.

    python scripts/merge_lora.py --adapter_dir out/lora --output_dir out/merged [--base /path/to/base]

The base defaults to the one recorded beside the adapter (`space.json`). The saved directory holds
the merged weights, the tokenizer (with the mask tokens) and the SPACE fields in its config, so
`space.decode` needs no flags. The merge itself is `space.training.export.merge_adapter`.
"""

from __future__ import annotations

from pathlib import Path

from space.cli import run
from space.training.export import merge_adapter, parse_merge_args


def main(argv=None) -> Path:
    args = parse_merge_args(argv, description=__doc__.split("\n\n")[0])
    merged = merge_adapter(args.adapter_dir, args.output_dir, base=args.base, dtype=args.dtype)
    print(merged)
    return merged.path


if __name__ == "__main__":
    run(main)
