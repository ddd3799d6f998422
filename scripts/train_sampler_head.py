"""Train a sampler head (`space.adapters.sampler_head`) for a SPACE model and write a copy of the model that carries it.

    python scripts/train_sampler_head.py --model runs/default_model/export --train_data runs/default_model/train.jsonl \
        --held_out runs/default_model/held_out.jsonl --output_dir runs/default_model/export_head

One forward per answer collects the mask rows (kept in `--work_dir`, so a rerun skips it), the head trains on
them alone, and the report compares the plain masks with the head on the held-out answers: accuracy per offset
and the tokens a chain step accepts (JSON `sampler_head_report.json` and a markdown table). The run is
`space.training.sampler_head.run_sampler_head`; the head's training and measurement
`space.adapters.sampler_head_training`.
"""

from __future__ import annotations

from space.cli import run
from space.training.sampler_head import parse_sampler_head_args, report_table, run_sampler_head


def main(argv=None) -> dict:
    report = run_sampler_head(parse_sampler_head_args(argv))
    print(report_table(report))
    return report


if __name__ == "__main__":
    run(main)
