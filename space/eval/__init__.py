"""Evaluation: datasets and prompts, timed runs of every method, metrics, quality, reports, and the
self-speculative skip-layer search.

`evaluate(args) -> summary` runs a whole evaluation (`pipeline`; `scripts/eval_infer.py` is its
command line, `flags.EvalArgs` its settings). The pieces: `datasets` (prompts to evaluate and the
vendored HumanEval-X), `prompts` (model input text per prompt style), `harness` (interleaved, timed,
resumable runs), `metrics` (speed and the original SPACE metrics), `code` (code execution and pass@k),
`rouge` (ROUGE-L), `divergence` (why a greedy answer left AR's), `report` (tables, figure, versions),
`skip_search` (the skip-set optimiser), `skip_pipeline` (the search on a model:
`search_skip_layers(args)`), `compare` (one prompt, several methods: `scripts/generate.py`), and the
measurements behind `scripts/bench_step.py` (`step_cost`) and `scripts/measure_logit_noise.py` (`logit_noise`).

Importing this package stays light: `evaluate` imports the pipeline when called.
"""


def evaluate(args) -> dict:
    """Run the evaluation described by `args` (a `space.eval.flags.EvalArgs`); returns the summary."""
    from space.eval.pipeline import evaluate as run_evaluation

    return run_evaluation(args)
