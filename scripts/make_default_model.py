"""Remake the shipped default model: self-distillation data, LoRA SAR-SFT, export. One command, resumable.

    python scripts/make_default_model.py                      # the recipe (about 90 min on 2 CPU cores)
    python scripts/make_default_model.py --model tiny_dir --limit 8 --max_new_tokens 16 --max_steps 4 \\
        --work_dir /tmp/run --export_dir /tmp/export              # the same steps on a tiny model

Steps (each skipped or resumed when its output exists):
1. `scripts/make_distill_data.py`: the base model's greedy answers to the project's prompts;
2. `scripts/train_sft.py space/configs/default_model/sft.yaml`: LoRA SAR-SFT in multi-block mode,
   resumed from the newest complete checkpoint if one exists, skipped once finished;
3. `scripts/export_default_model.py`: float16 adapter + SPACE fields into `space/default_model/`.
A `recipe_log.json` in the work dir records each step's wall time and the exact commands, and the
settings the work dir was made with: a rerun with other ones is refused (use another `--work_dir`).
The pipeline itself is `space.training.default_model.make_default_model`.
"""

from __future__ import annotations

from pathlib import Path

from space.cli import run
from space.training.default_model import make_default_model, parse_default_model_args


def main(argv=None) -> Path:
    return make_default_model(parse_default_model_args(argv))  # it reports each step on stderr


if __name__ == "__main__":
    run(main)
