"""What the sandbox costs: seconds per problem of canonical solutions, isolated and not, per language.

Owns the measurement behind `scripts/bench_execution.py`: its flags (`ExecutionArgs`) and the JSON report.
Interleaves the two modes problem by problem (drift hits both alike) after one untimed warm-up run per
language and mode (Go's build cache, the JIT's and the page cache's first-use costs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import mean

from space.cli import parse_flags, require_counts
from space.errors import SpaceError
from space.eval.code.programs import build_program
from space.eval.code.sandbox import run_program
from space.eval.code.toolchains import toolchain_available
from space.eval.datasets import HUMANEVAL_LANGUAGES, load_problems
from space.io import provenance, write_json


@dataclass
class ExecutionArgs:
    """The flags of `scripts/bench_execution.py`."""

    languages: str = ",".join(HUMANEVAL_LANGUAGES)
    problems: int = field(default=20, metadata={"help": "the first N problems of each language"})
    output: str = "outputs/execution_time.json"


def parse_execution_args(argv: list[str] | None = None, description: str | None = None) -> ExecutionArgs:
    (args,) = parse_flags((ExecutionArgs,), argv, "bench_execution.py", description)
    chosen = [language for language in args.languages.split(",") if language]
    unknown = sorted(set(chosen) - set(HUMANEVAL_LANGUAGES))
    if unknown or not chosen:
        raise SpaceError(f"--languages takes a comma list of {', '.join(HUMANEVAL_LANGUAGES)} (got {args.languages!r})")
    require_counts(args, ("problems",))
    return args


def measure_execution(args: ExecutionArgs) -> dict:
    """`time_execution` over the flags' languages and problems; the report (with its provenance) goes to
    `args.output`."""
    results = time_execution([x for x in args.languages.split(",") if x], args.problems)
    report = dict(results=results, provenance=provenance())
    write_json(args.output, report)
    return report


def time_execution(languages: list[str] = list(HUMANEVAL_LANGUAGES), problems: int = 20,
                   timeout: float = 20.0) -> dict:
    """Per language: mean seconds per problem isolated and unisolated, their ratio, and how many passed."""
    results = {}
    for language in languages:
        if not toolchain_available(language):
            results[language] = {"skipped": "toolchain not found"}
            continue
        chosen = load_problems(language)[:problems]
        programs = [build_program(p, p["canonical_solution"], language) for p in chosen]
        seconds = {True: [], False: []}
        passed = {True: 0, False: 0}
        for isolate in (True, False):  # warm-up
            run_program(programs[0], language, timeout=timeout, isolate=isolate)
        for index, program in enumerate(programs):
            order = (True, False) if index % 2 == 0 else (False, True)
            for isolate in order:
                start = time.perf_counter()
                result = run_program(program, language, timeout=timeout, isolate=isolate)
                seconds[isolate].append(time.perf_counter() - start)
                passed[isolate] += result.passed
        isolated, plain = mean(seconds[True]), mean(seconds[False])
        results[language] = dict(problems=len(programs), seconds_isolated=round(isolated, 3),
                                 seconds_unisolated=round(plain, 3), ratio=round(isolated / plain, 3),
                                 passed_isolated=passed[True], passed_unisolated=passed[False])
    return results
