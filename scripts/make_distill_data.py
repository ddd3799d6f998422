"""Build the self-distillation SFT data: project-built prompts answered by the base model (greedy).

    python scripts/make_distill_data.py --output runs/default_model/distill.jsonl

Writes alpaca-format JSONL records (`instruction`, `input`, `output`, plus `id` and the generated
`output_ids`) for `scripts/train_sft.py --template chat_template`. Resumable: rerun to continue.
`--model` and `--max_new_tokens` are recorded beside the answers (`<output stem>.settings.json`); a rerun
with other ones is refused, naming the flag, so one file never mixes two models or two length limits.
The step itself is `space.training.distill.make_distill_data`.
"""

from __future__ import annotations

from space.cli import run
from space.training.distill import make_distill_data, parse_distill_args


def main(argv=None) -> list[dict]:
    return make_distill_data(parse_distill_args(argv))  # it reports the prompt and answer counts on stderr


if __name__ == "__main__":
    run(main)
