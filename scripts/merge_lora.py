"""Fold a LoRA adapter trained by scripts/train_sft.py into its base and save a plain model.

    python scripts/merge_lora.py --adapter_dir out/lora --output_dir out/merged [--base /path/to/base]

The base defaults to the one recorded beside the adapter (`space.json`). The saved directory holds
the merged weights, the tokenizer (with the mask tokens) and the SPACE fields in its config, so
`space.decode` needs no flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run  # noqa: E402
from space.models import adapter_base  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--base", default=None, help="base model (default: the one recorded with the adapter)")
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args(argv)


def main(argv=None) -> Path:
    args = parse_args(argv)
    adapter_dir = Path(args.adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise space.SpaceError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)")
    base = args.base if args.base is not None else adapter_base(adapter_dir)
    model, tokenizer = space.load_model(base, adapter=adapter_dir, dtype=args.dtype, merge_adapter=True)
    output = Path(args.output_dir)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    print(f"merged {adapter_dir} into {base or 'the embedded default'} -> {output}")
    return output


if __name__ == "__main__":
    run(main)
