"""Top-1 accuracy of a SPACE model's mask predictions per offset, on self-distillation answers it never trained on.

    python scripts/eval_mask_accuracy.py --data runs/default_model/held_out.jsonl --model runs/default_model/sft

Each held-out answer gets `--blocks` mask blocks of the full trained width at random response positions (fixed
seed); the accuracy of offsets 1..k is reported for code prompts and for general ones, as JSON (`--output`) and a
markdown table. The measurement is `space.bench.mask_accuracy`.
"""

from __future__ import annotations

from space.bench.mask_accuracy import accuracy_table, mask_accuracy, parse_mask_accuracy_args
from space.cli import run


def main(argv=None) -> dict:
    result = mask_accuracy(parse_mask_accuracy_args(argv))
    print(accuracy_table(result))
    return result


if __name__ == "__main__":
    run(main)
