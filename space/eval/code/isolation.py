"""Isolation of the programs pass@k runs: bubblewrap namespaces, an unprivileged user and a process cap.

Every compile and run step of a test program starts inside `bwrap` (bubblewrap, Debian package
`bubblewrap`), which gives it:

* no network: a network namespace of its own, with only a loopback that reaches nothing outside;
* a read-only view of the whole file system except the run's own directory (work dir, HOME, TMPDIR)
  and, for Go's compile step only, the shared build cache; `/tmp` is a private, empty tmpfs;
* a pid namespace whose init is bubblewrap: when the program returns, every process it started is
  killed, `setsid` or not, and it cannot see or signal the caller's processes;
* no capabilities, and, when the evaluation runs as root, the unprivileged user `nobody` (65534), so
  that files outside stay closed to it even through a kernel bug in the mount locks, and so that the
  process cap binds: Linux exempts root from RLIMIT_NPROC.

The process cap (`PROCESS_LIMIT` threads/processes, RLIMIT_NPROC) stops fork bombs; the CPU, memory,
file-size and wall-clock limits of `space.eval.code.sandbox` still apply inside. What it does not
protect against: a kernel or bubblewrap exploit, reading files that are world-readable (the program
sees the file system read-only, secrets included if their modes allow `nobody`), and CPU or memory
contention while it runs. For untrusted models at scale, add a VM or a container you throw away.

Where bubblewrap is missing or cannot create namespaces (some container runtimes forbid them),
`check_isolation` raises one error naming the fix; running without isolation takes an explicit
`isolate=False` (`--unsafe_execution true` on the command line), which warns.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from space.errors import SpaceError

SANDBOX_USER = 65534  # nobody / nogroup: who the programs run as when the evaluation runs as root
# Threads count as processes: a JVM runs ~20, `go test -c` starts a compiler per package in parallel.
PROCESS_LIMIT = 256
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`; "
                "or `bash scripts/setup_toolchains.sh`)")


def runs_as_root() -> bool:
    return os.geteuid() == 0


def isolated_argv(argv: list[str], root: Path, workdir: Path, writable: tuple[Path, ...] = ()) -> list[str]:
    """`argv` wrapped so that it runs isolated, in `workdir`, able to write only under `root` and `writable`."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SpaceError(f"code execution is isolated with bubblewrap, which is not on PATH: {INSTALL_HINT}")
    user = ["setpriv", f"--reuid={SANDBOX_USER}", f"--regid={SANDBOX_USER}", "--clear-groups",
            "--inh-caps=-all"] if runs_as_root() else []
    binds = []
    for path in (root, *writable):
        binds += ["--bind", str(path), str(path)]
    return user + [
        bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--ro-bind", "/", "/",
        "--tmpfs", "/tmp",  # before the binds: the run's directory may live under /tmp
        *binds,
        "--dev", "/dev", "--proc", "/proc",
        "--chdir", str(workdir),
        "--", "env", "-u", "PWD", *argv,  # bwrap sets PWD; the program gets only the environment we pass
    ]


def give_to_sandbox_user(*paths: Path) -> None:
    """Let the sandbox user write the run's directory (only needed when we run as root)."""
    if not runs_as_root():
        return
    for path in paths:
        for directory, _, files in os.walk(path):
            os.chown(directory, SANDBOX_USER, SANDBOX_USER)
            for name in files:
                os.chown(os.path.join(directory, name), SANDBOX_USER, SANDBOX_USER, follow_symlinks=False)


def process_limit() -> int:
    """RLIMIT_NPROC for a run. It counts every process of the (real) user: `nobody` runs nothing else
    here; a normal user's own processes are added so that the cap only bounds what the program starts."""
    if runs_as_root():
        return PROCESS_LIMIT
    return PROCESS_LIMIT + _processes_of(os.getuid())


def _processes_of(uid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(list((entry / "task").iterdir()))
            except OSError:  # exited meanwhile
                continue
    return count


@functools.lru_cache(maxsize=None)
def _probe(executable: str) -> str | None:
    """None when an isolated process can start this interpreter, else why not."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="space-probe-") as root:
        give_to_sandbox_user(Path(root))
        try:
            argv = isolated_argv([executable, "-I", "-c", "import os; open('probe', 'w').write('ok')"], Path(root),
                                 Path(root))
        except SpaceError as error:
            return str(error)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"cannot start the sandbox ({error})"
        if done.returncode != 0 or not (Path(root) / "probe").is_file():
            why = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"the sandbox cannot start ({why})"
    return None


@functools.lru_cache(maxsize=None)
def sandbox_python() -> str:
    """A Python the sandbox user can start: this interpreter, else the system's `python3` (a venv under
    a private home, e.g. pyenv in /root, is closed to `nobody`; the test programs need only the standard
    library). Raises one clear error, naming the fix, when programs cannot be isolated here at all."""
    candidates = [sys.executable] + [path for path in ("/usr/bin/python3", "/usr/local/bin/python3")
                                     if os.path.exists(path) and path != sys.executable]
    problems = []
    for candidate in candidates:
        problem = _probe(candidate)
        if problem is None:
            return candidate
        problems.append(f"{candidate}: {problem}")
    who = " as the user 'nobody' (the evaluation runs as root)" if runs_as_root() else ""
    raise SpaceError(
        f"cannot isolate generated programs{who} ({'; '.join(problems)}). Fix: {INSTALL_HINT}; bubblewrap needs "
        "user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0, or a container "
        "started with them allowed), and a python3 readable by that user. To run the programs without any "
        "isolation (not recommended), pass --unsafe_execution true (isolate=False)."
    )


def check_isolation() -> None:
    """Raise one clear error when generated programs cannot be isolated here."""
    sandbox_python()
