"""What each language needs to compile and run a test program: the tools on PATH, the steps (argv,
limits) of one run, the offline shims copied next to the program, and the environment.

The shims are real files in `shims/<language>/`, copied into the fresh working directory of every
run of that language (they ship as package data, so an installed package finds them too):

* `shims/go/`: the `humaneval` module's `go.mod`, whose `replace` directive points testify (which
  the tests import; a module proxy is not reachable offline) at a local stand-in in `testify/` with
  testify's equality rule (ObjectsAreEqual: reflect.DeepEqual, bytes compared by content);
* `shims/js/node_modules/js-md5/`: JavaScript/162's canonical solution requires the npm package
  js-md5; node's own crypto gives the same hex digest.

Running the steps is `space.eval.code.sandbox`'s job.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from space.eval.datasets import check_language

SHIMS_DIR = Path(__file__).resolve().parent / "shims"

# A compile is not the candidate's fault when the machine is busy: compilers get their own budget.
COMPILE_TIMEOUT = 60.0
COMPILE_MEMORY_MB = 4096
# Largest file a program may write (its captured stdout and stderr included): a flood of output ends
# in SIGXFSZ instead of filling the disk. Compilers and linkers write real binaries, so more for them.
RUN_FILE_MB = 16
COMPILE_FILE_MB = 512

TOOLS = {"python": (), "cpp": ("g++",), "java": ("javac", "java"), "js": ("node",), "go": ("go",)}
# A JVM for a few asserts: one GC thread and the quick JIT start faster and use less CPU.
_JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@dataclass
class Step:
    """One process of a run: a compile step's failure is a compile error, a run step's a failed test."""

    argv: list[str]
    timeout: float
    memory_mb: int | None  # RLIMIT_AS; None for runtimes that reserve huge address space (JVM, V8)
    file_mb: int
    compile: bool = False
    fail_marker: str | None = None  # stderr text that fails a run even with exit code 0
    writable: tuple[Path, ...] = ()  # besides the run's own directory, what an isolated step may write


def toolchain_available(language: str) -> bool:
    """Whether the compilers/interpreters `language` needs are on PATH (python: this interpreter)."""
    check_language(language)
    if language == "python":
        return bool(sys.executable) and os.path.exists(sys.executable)
    return all(shutil.which(tool) for tool in TOOLS[language])


def prepare(language: str, workdir: Path, program: str, timeout: float, memory_mb: int,
            python: str | None = None) -> list[Step]:
    """Write `program` (and the language's shims) into `workdir`; the steps that compile and run it
    (`python`: the interpreter of Python programs, default this one)."""
    shims = SHIMS_DIR / language
    if shims.is_dir():
        shutil.copytree(shims, workdir, dirs_exist_ok=True)
    if language == "python":
        return _plan_python(workdir, program, timeout, memory_mb, python or sys.executable)
    return _PLANS[language](workdir, program, timeout, memory_mb)


def _plan_python(workdir: Path, program: str, timeout: float, memory_mb: int, python: str) -> list[Step]:
    (workdir / "solution.py").write_text(program, encoding="utf-8")
    # -I: no PYTHON* variables, no user site, no script dir shadowing; the test sees only the stdlib
    # and the interpreter's site-packages.
    return [Step([python, "-I", "solution.py"], timeout, memory_mb, RUN_FILE_MB)]


def _plan_cpp(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[Step]:
    (workdir / "solution.cpp").write_text(program, encoding="utf-8")
    compile_argv = ["g++", "-std=c++17", "-O0", "-o", "solution", "solution.cpp"]
    if "openssl/" in program:  # string_to_md5 (CPP/162) uses OpenSSL's MD5; linking it otherwise costs time
        compile_argv.append("-lcrypto")
    return [
        Step(compile_argv, COMPILE_TIMEOUT, COMPILE_MEMORY_MB, COMPILE_FILE_MB, compile=True),
        Step(["./solution"], timeout, memory_mb, RUN_FILE_MB),
    ]


def _plan_java(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[Step]:
    (workdir / "Main.java").write_text(program, encoding="utf-8")  # the test is `public class Main`
    javac = ["javac", "-nowarn", "-encoding", "UTF-8"] + [f"-J{flag}" for flag in _JVM_FLAGS] + ["Main.java"]
    java = ["java", f"-Xmx{memory_mb}m"] + _JVM_FLAGS + ["-cp", ".", "Main"]
    return [
        Step(javac, COMPILE_TIMEOUT, None, COMPILE_FILE_MB, compile=True),
        Step(java, timeout, None, RUN_FILE_MB),
    ]


def _plan_js(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[Step]:
    (workdir / "solution.js").write_text(program, encoding="utf-8")  # next to the js-md5 shim
    node = ["node", f"--max-old-space-size={memory_mb}", "solution.js"]
    # node's console.assert prints "Assertion failed" and carries on: the exit code alone says nothing.
    return [Step(node, timeout, None, RUN_FILE_MB, fail_marker="Assertion failed")]


def _plan_go(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[Step]:
    (workdir / "main_test.go").write_text(program, encoding="utf-8")  # in the shim's humaneval module
    # vet is off: a style complaint is not a failed test. The go tool and its runtime reserve large
    # address ranges, so only the test binary gets an address-space cap.
    build = ["go", "test", "-c", "-vet=off", "-o", "humaneval.test", "."]
    return [
        # only the go tool writes the shared build cache: the test binary never sees it
        Step(build, COMPILE_TIMEOUT, None, COMPILE_FILE_MB, compile=True, writable=(go_cache_dir(),)),
        Step(["./humaneval.test"], timeout, memory_mb, RUN_FILE_MB),
    ]


def go_cache_dir() -> Path:
    """Go's build cache for every run (our own, never the user's `GOCACHE`): it outlives one run, because
    rebuilding the testing package every time costs seconds."""
    return Path(tempfile.gettempdir()) / "space-eval-gocache"


_PLANS = {"cpp": _plan_cpp, "java": _plan_java, "js": _plan_js, "go": _plan_go}


def environment(language: str, root: Path) -> dict[str, str]:
    """Only what the toolchains need: nothing of the caller's environment leaks into the program."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8"}
    if language == "go":
        env.update(
            GOCACHE=str(go_cache_dir()),
            GOPATH=str(root / "gopath"),
            GOFLAGS="-mod=mod",
            GOPROXY="off",
            GOTOOLCHAIN="local",
            GOTELEMETRY="off",
            GO111MODULE="on",
            CGO_ENABLED="0",
        )
    return env
