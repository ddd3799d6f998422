"""Run one test program in the sandbox and say how it went; `check_completion` goes from a model's raw
answer to an `ExecutionResult` (extract, build, run).

The sandbox: every step runs isolated (`space.eval.code.isolation`: no network, the file system
read-only outside a throwaway run directory, a pid namespace that ends every process the program
started, an unprivileged user, a process cap), with a minimal environment, stdin on /dev/null,
rlimits (address space, CPU time, file size, no core dumps) and a wall-clock timeout. Whatever the
program does, the caller gets an `ExecutionResult`, never an exception; only a machine where the
isolation cannot be set up at all is a `SpaceError` (before anything runs).
"""

from __future__ import annotations

import math
import numbers
import os
import resource
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from space.errors import SpaceError
from space.eval.code.extract import extract_code
from space.eval.code.isolation import give_to_sandbox_user, isolated_argv, process_limit, sandbox_python
from space.eval.code.programs import build_program
from space.eval.code.toolchains import TOOLS, Step, environment, prepare, toolchain_available
from space.eval.datasets import check_language

STATUSES = ("passed", "failed", "timeout", "skipped", "error")
DETAIL_LINES = 6
DETAIL_CHARS = 600


@dataclass
class ExecutionResult:
    """How one program ran: `status` is one of STATUSES; a compile error is "failed"."""

    status: str  # "passed", "failed", "timeout", "skipped" (toolchain missing), "error" (harness failure)
    detail: str = ""  # short: the last lines of stderr, or why it was skipped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(program: str, language: str, timeout: float = 10.0, memory_mb: int = 2048,
                isolate: bool = True) -> ExecutionResult:
    """Compile (if needed) and run `program` in a fresh temporary directory; "passed" iff it exits 0
    (and, for JS, printed no "Assertion failed": node's console.assert does not throw).

    `timeout` is the wall-clock limit of the run itself (CPU time is capped just above it);
    compiling has its own `toolchains.COMPILE_TIMEOUT`. `memory_mb` caps the address space of python and native
    binaries, the heap (-Xmx) of the JVM and the old space of node. `isolate=False` runs the program
    with the caller's rights (limits only): for machines where bubblewrap cannot run, at your own risk.
    Safe to call from a thread pool: between fork and exec the child only sets rlimits.
    """
    check_language(language)
    check_run_args(program, timeout, memory_mb, isolate)
    if not toolchain_available(language):
        return _skipped(language)
    python = sandbox_python() if isolate else None  # also: one clear error if isolation is impossible here
    with tempfile.TemporaryDirectory(prefix="space-exec-", ignore_cleanup_errors=True) as root:
        root = Path(root)
        workdir = root / "work"
        workdir.mkdir()
        steps = prepare(language, workdir, program, timeout, memory_mb, python)
        env = environment(language, root)
        if isolate:
            _share_with_sandbox(root, steps)
        for index, step in enumerate(steps):
            if isolate:
                step.argv = isolated_argv(step.argv, root, workdir, step.writable)
            result = _run_step(step, workdir, env, root / f"step{index}", isolate)
            if result is not None:
                return result
        return ExecutionResult("passed")


def check_run_args(program, timeout, memory_mb, isolate) -> None:
    """One line for limits `run_program` cannot apply: rlimits take whole seconds and bytes, so NaN and
    infinity cannot be set, and a limit of zero or less would fail every program as a timeout."""
    if not isinstance(program, str):
        raise SpaceError(f"program must be the source text, a str (got {type(program).__name__})")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < math.inf:
        raise SpaceError(f"timeout must be a finite number of seconds > 0 (got {timeout!r})")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, numbers.Integral) or memory_mb < 1:
        raise SpaceError(f"memory_mb must be a whole number of MiB >= 1 (got {memory_mb!r})")
    if not isinstance(isolate, bool):
        raise SpaceError(f"isolate must be True or False (got {isolate!r})")


def check_completion(problem: dict, completion_text: str, language: str, timeout: float = 10.0,
                     isolate: bool = True) -> ExecutionResult:
    """Run the tests of `problem` on a model's raw answer: extract_code, build_program, run_program."""
    if not toolchain_available(language):  # skip before building: no need to parse what cannot run
        return _skipped(language)
    code = extract_code(completion_text, language)
    return run_program(build_program(problem, code, language), language, timeout=timeout, isolate=isolate)


def _share_with_sandbox(root: Path, steps: list[Step]) -> None:
    """The run directory, and the shared directories a step writes, belong to the sandbox user."""
    give_to_sandbox_user(root)
    for path in {path for step in steps for path in step.writable}:
        path.mkdir(parents=True, exist_ok=True)
        if path.stat().st_uid != os.geteuid() or not os.access(path, os.W_OK):
            continue  # someone else's directory: leave it as it is
        give_to_sandbox_user(path)


def _skipped(language: str) -> ExecutionResult:
    return ExecutionResult("skipped", f"{language} toolchain not found on PATH: needs {', '.join(TOOLS[language])}")


def _run_step(step: Step, workdir: Path, env: dict[str, str], log: Path, isolate: bool) -> ExecutionResult | None:
    """Run one step; None if it succeeded, else the result that ends the run."""
    try:
        returncode, stderr, stdout = _execute(step, workdir, env, log, isolate)
    except OSError as error:  # the toolchain vanished or cannot start: not the candidate's fault
        return ExecutionResult("error", f"cannot run {step.argv[0]}: {error}")
    what = "compile " if step.compile else ""
    if returncode is None or returncode == -signal.SIGXCPU:
        return ExecutionResult("timeout", f"{what}timed out after {step.timeout:g} s")
    output = stderr if stderr.strip() else stdout
    if returncode != 0:
        prefix = "compile error: " if step.compile else _signal_note(returncode)
        return ExecutionResult("failed", prefix + _tail(output))
    if step.fail_marker and step.fail_marker in stderr:
        return ExecutionResult("failed", _tail(stderr))
    return None


def _execute(step: Step, workdir: Path, env: dict[str, str], log: Path, isolate: bool) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stderr, stdout). Output goes to files, so the file-size limit
    caps it and a chatty program cannot fill the parent's memory or block on a full pipe."""
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            step.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,  # its own process group, so a timeout kills its children too
            preexec_fn=_limits(step, process_limit() if isolate else None),
        )
        exited = _wait_without_reaping(process.pid, step.timeout)
        # Kill the group while the unreaped leader still holds its id, so the id cannot have been
        # reused by another run; this also ends background children of a program that exited.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        returncode = process.wait()
    return (returncode if exited else None), _read_tail(err_path), _read_tail(out_path)


def _wait_without_reaping(pid: int, timeout: float) -> bool:
    """Whether process `pid` exited within `timeout` seconds; it is left a zombie for the caller."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while _running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return True


def _running(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:  # someone else reaped it
        return False


def _limits(step: Step, processes: int | None):
    """preexec_fn setting the step's rlimits in the child. RLIMIT_NPROC only when isolated: it counts
    every process of the real user, and only the sandbox runs as a user of its own (see `isolation`)."""
    cpu = math.ceil(step.timeout) + 1

    def apply() -> None:
        if processes is not None:
            _setlimit(resource.RLIMIT_NPROC, processes)
        _setlimit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
        _setlimit(resource.RLIMIT_FSIZE, step.file_mb * 2**20)
        _setlimit(resource.RLIMIT_CORE, 0)  # an assert's abort must not dump cores into the workdir
        if step.memory_mb is not None:
            _setlimit(resource.RLIMIT_AS, step.memory_mb * 2**20)

    return apply


def _setlimit(which: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:  # an unprivileged process cannot raise its hard limit
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _read_tail(path: Path, limit: int = 65536) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace")


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-DETAIL_LINES:])[-DETAIL_CHARS:]


def _signal_note(returncode: int) -> str:
    if returncode >= 0:
        return ""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    why = {"SIGXFSZ": " (output too large)", "SIGKILL": " (killed)", "SIGSEGV": " (crash)", "SIGABRT": ""}.get(name, "")
    return f"{name}{why}: "
