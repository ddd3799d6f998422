"""Evaluation: datasets and prompts, timed runs of every method, metrics, quality, reports, and the
self-speculative skip-layer search.

`evaluate(args) -> summary` runs a whole evaluation (`pipeline`; `scripts/eval_infer.py` is its
command line, `flags.EvalArgs` its settings). The pieces: `datasets` (prompts to evaluate and the
vendored HumanEval-X), `prompts` (model input text per prompt style), `harness` (interleaved, timed
runs), `results` (the run directory: resumable, locked, settings checked), `metrics` (speed and the original SPACE
metrics), `code` (code execution and pass@k), `rouge` (ROUGE-L), `divergence` (why a greedy answer left AR's),
`report` (the summary tables and figure),
`skip_search` (the skip-set optimiser), `skip_pipeline` (the search on a model:
`search_skip_layers(args)`), `compare` (one prompt, several methods: `scripts/generate.py`) and `quality`
(batched greedy answers scored without timing: `scripts/eval_quality.py`). The measurements behind the
benchmark scripts are `space.bench`.

`run_program(program, language, timeout=...)` runs one test program in the sandbox (`code.sandbox`,
`code.isolation`) and returns its `ExecutionResult` (passed / failed / timeout / error / skipped).

Importing this package stays light: `evaluate` and `run_program` import their modules when called.
"""


def evaluate(args) -> dict:
    """Run the evaluation described by `args` (a `space.eval.flags.EvalArgs`); returns the summary."""
    from space.eval.pipeline import evaluate as run_evaluation

    return run_evaluation(args)


def run_program(program: str, language: str, timeout: float = 10.0, memory_mb: int = 2048, isolate: bool = True):
    """Compile and run one test program isolated (no network, read-only file system outside its own
    directory, every process it started ended on return, unprivileged, a process cap) and under limits;
    returns a `space.eval.code.ExecutionResult`. `isolate=False` runs it with your rights: at your own risk."""
    from space.eval.code.sandbox import run_program as run_isolated

    return run_isolated(program, language, timeout=timeout, memory_mb=memory_mb, isolate=isolate)
