"""Find the skip set of self-speculative decoding for a model: Bayesian optimisation of measured tokens/s.

`space.eval.skip_pipeline` runs the search (calibration prompts, timed self_spec passes, the AR
baseline) and `space.eval.skip_search` proposes the skip sets. Trials go to a JSONL log as they
finish, so the same command resumes an interrupted search. The best set is written into `--output`
(the original `skip_layers.json` format; other entries are kept); a one-line JSON summary is printed.

    python scripts/search_skip_layers.py --llm_dir path/to/model --time_budget 3600
    python scripts/eval_infer.py --llm_dir path/to/model --methods self_spec,ar \\
        --skip_layers space/configs/self_spec/skip_layers.json

The optimum depends on the hardware and software stack (docs/spec/SELF_SPECULATIVE.md §8.3):
search on the machine you will decode on, with the dtype and device you will use.
"""

from __future__ import annotations

import json

from space.cli import run
from space.eval.skip_pipeline import parse_search_args, search_skip_layers


def main(argv=None) -> dict:
    summary = search_skip_layers(parse_search_args(argv, description=__doc__.split("\n\n")[0]))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run(main)
