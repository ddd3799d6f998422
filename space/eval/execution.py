"""HumanEval-X execution: pull code out of a model's answer, build the test program, run it under
limits, and estimate pass@k.

Owns: the vendored HumanEval-X problems (`load_problems`), code extraction from chat answers
(`extract_code`), program assembly per language (`build_program`), running one program
(`run_program`, `check_completion`) and the unbiased pass@k estimator (`pass_at_k`). Does not own
prompting, generation or reporting: text comes in, an `ExecutionResult` goes out.

The sandbox is a throwaway working directory, a minimal environment, stdin on /dev/null, rlimits
(address space, CPU time, file size, no core dumps) and a wall-clock timeout that kills the whole
process group. It stops infinite loops, memory hogs and output floods. It is not a security
boundary (the program can still read the file system and reach the network): run untrusted model
output inside a container or VM you can throw away.
"""

from __future__ import annotations

import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from space.io import read_records
from space.errors import SpaceError

LANGUAGES = ("python", "cpp", "java", "js", "go")
STATUSES = ("passed", "failed", "timeout", "skipped", "error")
DATA_DIR = Path(__file__).parent / "data" / "humaneval-x"

# A compile is not the candidate's fault when the machine is busy: compilers get their own budget.
COMPILE_TIMEOUT = 60.0
COMPILE_MEMORY_MB = 4096
# Largest file a program may write (its captured stdout and stderr included): a flood of output ends
# in SIGXFSZ instead of filling the disk. Compilers and linkers write real binaries, so more for them.
RUN_FILE_MB = 16
COMPILE_FILE_MB = 512
DETAIL_LINES = 6
DETAIL_CHARS = 600

_TOOLS = {"python": (), "cpp": ("g++",), "java": ("javac", "java"), "js": ("node",), "go": ("go",)}

_FENCE_TAGS = {
    "python": {"python", "py", "python3"},
    "cpp": {"cpp", "c++", "cc", "cxx", "c"},
    "java": {"java"},
    "js": {"javascript", "js", "node", "nodejs"},
    "go": {"go", "golang"},
}

# Headers HumanEval-X solutions commonly use without including them; CodeGeeX's harness adds the same.
_CPP_INCLUDES = (
    "#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
    "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>", "#include<iostream>",
)
# Go refuses unused imports, so these are added only when the code names them (as CodeGeeX does).
_GO_HELPER_IMPORTS = (
    "math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5",
)


@dataclass
class ExecutionResult:
    """How one program ran: `status` is one of STATUSES; a compile error is "failed"."""

    status: str  # "passed", "failed", "timeout", "skipped" (toolchain missing), "error" (harness failure)
    detail: str = ""  # short: the last lines of stderr, or why it was skipped

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# --------------------------------------------------------------------------------------------- data


def load_problems(language: str) -> list[dict]:
    """The 164 HumanEval-X records of `language`, in file order (task ids `<Lang>/0` ... `/163`)."""
    _check_language(language)
    path = DATA_DIR / f"humaneval_{language}.jsonl.gz"
    if not path.is_file():
        raise SpaceError(f"HumanEval-X data for {language} not found at {path}: reinstall the package")
    return read_records(path)


def toolchain_available(language: str) -> bool:
    """Whether the compilers/interpreters `language` needs are on PATH (python: this interpreter)."""
    _check_language(language)
    if language == "python":
        return bool(sys.executable) and os.path.exists(sys.executable)
    return all(shutil.which(tool) for tool in _TOOLS[language])


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise SpaceError(f"unknown language {language!r}: use one of {', '.join(LANGUAGES)}")


# ----------------------------------------------------------------------------------- extraction

_OPEN_FENCE = re.compile(r"^([ \t]*)```[ \t]*([^\s`]*)")
_CLOSE_FENCE = re.compile(r"^[ \t]*```[ \t]*$")


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(tag, code) of every fenced block; a block still open at the end runs to the end of the text
    (the generation was cut by max_new_tokens)."""
    lines = text.splitlines(keepends=True)
    blocks, i = [], 0
    while i < len(lines):
        opening = _OPEN_FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, tag = opening.group(1), opening.group(2).lower()
        j = i + 1
        while j < len(lines) and not _CLOSE_FENCE.match(lines[j]):
            j += 1
        # A fence indented inside a markdown list indents its code as much: take that back off.
        code = "".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:j])
        blocks.append((tag, code))
        i = j + 1
    return blocks


def extract_code(text: str, language: str) -> str:
    """The code of a chat-style answer: the first fenced block tagged with `language` (or untagged),
    else the first fenced block of any tag, else the whole text unchanged."""
    _check_language(language)
    blocks = _fenced_blocks(text)
    for tag, code in blocks:
        if tag == "" or tag in _FENCE_TAGS[language]:
            return code
    return blocks[0][1] if blocks else text


# ------------------------------------------------------------------------------ definitions

_C_TYPE_TOKEN = r"[\w:<>\[\],.*&?]+"


def _definition_regex(language: str, name: str = r"\w+") -> re.Pattern:
    """A function definition of `name` (a regex) in `language`, name captured as group "name".
    Calls do not match: C-like definitions need a return type before the name and `{` after `)`."""
    n = f"(?P<name>{name})"
    if language == "python":
        pattern = rf"^(?:async[ \t]+)?def[ \t]+{n}[ \t]*\("
    elif language in ("cpp", "java"):
        # `return f(x) {`-like lines are not definitions; a type token list is (`vector<int> f(`).
        pattern = (
            rf"^[ \t]*(?!(?:return|else|new|throw|case|delete)\b)(?:{_C_TYPE_TOKEN}[ \t]+)+[*&]?"
            rf"{n}[ \t]*\([^;{{}}]*\)[^;{{}}]*\{{"
        )
    elif language == "js":
        arrow_or_function = r"(?:async[ \t]*)?(?:function\b|\([^()]*\)[ \t]*=>|\w+[ \t]*=>)"
        declared = r"(?:\bfunction[ \t]*\*?[ \t]*|\b(?:const|let|var)[ \t]+)"
        pattern = rf"{declared}{n}[ \t]*(?:\(|=[ \t]*{arrow_or_function})"
    else:  # go: plain functions only (the entry point has no receiver)
        pattern = rf"^func[ \t]+{n}[ \t]*[\[(]"
    return re.compile(pattern, re.MULTILINE)


def _find_definitions(code: str, language: str, name: str = r"\w+") -> list[re.Match]:
    """Definitions of `name` (a regex) in `code`, comments ignored; offsets are those of `code`."""
    return list(_definition_regex(language, name).finditer(_blank_comments(code, language)))


def _defines(code: str, name: str, language: str) -> bool:
    return bool(_find_definitions(code, language, re.escape(name)))


def entry_point(problem: dict, language: str) -> str:
    """Name of the function the tests call: python's `check(NAME)` line, else the last function
    defined in the prompt (helpers such as `is_palindrome` come before it)."""
    if language == "python":
        calls = re.findall(r"^check\((\w+)\)", problem["test"], re.MULTILINE)
        if calls:
            return calls[-1]
    names = [m.group("name") for m in _find_definitions(problem["prompt"], language)]
    if not names:
        raise SpaceError(f"no function definition found in the prompt of {problem.get('task_id')}")
    return names[-1]


def _blank_comments(code: str, language: str) -> str:
    """`code` with C-style comments turned into spaces (newlines kept, so offsets still match):
    the words of a doc comment must not look like a definition or a brace."""
    if language == "python":
        return code
    out, i = list(code), 0
    while i < len(code):
        if code.startswith("//", i):
            end = code.find("\n", i)
        elif code.startswith("/*", i):
            end = code.find("*/", i + 2)
            end = -1 if end < 0 else end + 2
        elif code[i] in "\"'`":
            i = _skip_string(code, i)
            continue
        else:
            i += 1
            continue
        end = len(code) if end < 0 else end
        out[i:end] = [" " if ch != "\n" else ch for ch in code[i:end]]
        i = end
    return "".join(out)


def _skip_string(code: str, start: int) -> int:
    """Index just after the string or char literal opening at `start` (backslash escapes honoured)."""
    quote, i = code[start], start + 1
    while i < len(code) and code[i] != quote:
        i += 2 if code[i] == "\\" and quote != "`" else 1
    return i + 1


# ----------------------------------------------------------------------------- program assembly


def build_program(problem: dict, completion: str, language: str) -> str:
    """One runnable test program from a problem and extracted code.

    Heuristic: if the completion defines the entry point itself (python `def NAME(` at column 0;
    C++/Java a return type, `NAME(...)` and `{`; JS `function NAME(` or `const NAME =`; Go
    `func NAME(`), it is a whole function (case a) and the program is what the problem needs around
    it + completion + test:

    * python: the prompt up to the entry point's `def` (imports and helper functions; redefining a
      helper is harmless in Python);
    * cpp: common `#include`s, the prompt up to the entry point (its includes and helpers; only its
      `#include`/`using` lines when the completion redefines a helper); a `main` the completion
      wrote is removed, since the test brings its own;
    * java: the prompt's imports; a completion without `class Solution` is wrapped in the prompt's
      `class Solution {` (with its helper methods); `public class Solution` loses `public` and a
      `class Main` of the completion is removed, since Main.java holds the test's `public class Main`;
    * js: the prompt's helpers unless the completion redefines them;
    * go: `package main` and the imports the code and test use (see `_go_program`).

    Otherwise the completion is a body (case b), appended to the prompt as CodeGeeX does:
    prompt + completion + test (python: a body given flush left is indented into the function;
    cpp: the common includes first; go: the prompt's import block is replaced by computed imports).
    The python test already ends with `check(NAME)`, so nothing else is appended.
    """
    _check_language(language)
    name = entry_point(problem, language)
    if _defines(completion, name, language):
        return _FULL_BUILDERS[language](problem, completion, name)
    return _BODY_BUILDERS[language](problem, completion)


def _prompt_before_entry(problem: dict, name: str, language: str) -> str:
    """The prompt before the entry point's definition: its imports and helper functions."""
    matches = _find_definitions(problem["prompt"], language, re.escape(name))
    return problem["prompt"][: matches[-1].start()] if matches else ""


_NO_LINE = re.compile(r"(?!)")  # a `header` for languages whose prompt prefix has nothing to keep


def _prompt_prefix(problem: dict, name: str, language: str, completion: str, header: re.Pattern) -> str:
    """`_prompt_before_entry`, or only its `header` lines when the completion redefines a helper
    (a second definition would not compile)."""
    prefix = _prompt_before_entry(problem, name, language)
    helpers = [m.group("name") for m in _find_definitions(prefix, language)]
    if any(_defines(completion, helper, language) for helper in helpers):
        return "".join(line for line in prefix.splitlines(keepends=True) if header.match(line))
    return prefix


def _python_body(problem: dict, completion: str) -> str:
    first = next((line for line in completion.splitlines() if line.strip()), "")
    if first and not first[0].isspace():  # a chat model sometimes gives the body flush left
        completion = textwrap.indent(completion, "    ")
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n"


def _python_full(problem: dict, completion: str, name: str) -> str:
    prefix = _prompt_before_entry(problem, name, "python")
    return prefix + "\n" + completion + "\n" + problem["test"] + "\n"


_CPP_HEADER = re.compile(r"^[ \t]*(?:#[ \t]*include|using[ \t]+namespace)\b")


def _cpp_includes(code: str) -> str:
    return "".join(line + "\n" for line in _CPP_INCLUDES if line not in code)


def _cpp_body(problem: dict, completion: str) -> str:
    prompt = problem["prompt"]
    return _cpp_includes(prompt) + "\n" + prompt + completion + "\n" + problem["test"]


_CPP_MAIN = re.compile(r"^[ \t]*(?:int|void|signed)[ \t]+main[ \t]*\(", re.MULTILINE)


def _cpp_full(problem: dict, completion: str, name: str) -> str:
    code = _remove_block(completion, _CPP_MAIN)
    declaration = problem["declaration"].splitlines(keepends=True)
    declared = "".join(line for line in declaration if _CPP_HEADER.match(line))  # its includes outnumber the prompt's
    prefix = _prompt_prefix(problem, name, "cpp", code, _CPP_HEADER)
    return _cpp_includes(declared + prefix) + declared + prefix + "\n" + code + "\n" + problem["test"]


_JAVA_IMPORT = re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?[\w.*]+[ \t]*;[ \t]*\n?", re.MULTILINE)
_JAVA_MAIN_CLASS = re.compile(r"^[ \t]*(?:public[ \t]+)?(?:final[ \t]+)?class[ \t]+Main\b", re.MULTILINE)


def _java_imports(code: str) -> str:
    return "".join(match.group(0).rstrip("\n") + "\n" for match in _JAVA_IMPORT.finditer(code))


def _java_body(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"]


def _java_full(problem: dict, completion: str, name: str) -> str:
    imports = _java_imports(completion)
    code = _JAVA_IMPORT.sub("", completion)  # imports must precede every class, so they move to the top
    code = _remove_block(code, _JAVA_MAIN_CLASS)
    code = re.sub(r"\bpublic[ \t]+(?=(?:final[ \t]+)?class[ \t]+Solution\b)", "", code)
    if re.search(r"\bclass[ \t]+Solution\b", code):
        return _java_imports(problem["prompt"]) + imports + "\n" + code + "\n" + problem["test"]
    prefix = _prompt_prefix(problem, name, "java", code, _JAVA_IMPORT)
    if "class Solution" not in prefix:  # helpers were dropped, and the class opener with them
        prefix += "\nclass Solution {\n"
    return imports + prefix + code + "\n}\n" + problem["test"]


def _js_body(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"]


def _js_full(problem: dict, completion: str, name: str) -> str:
    prefix = _prompt_prefix(problem, name, "js", completion, _NO_LINE)  # the prompts import nothing
    return prefix + "\n" + completion + "\n" + problem["test"]


def _go_body(problem: dict, completion: str) -> str:
    return _go_program(problem, problem["prompt"] + completion)


def _go_full(problem: dict, completion: str, name: str) -> str:
    prefix = _prompt_prefix(problem, name, "go", completion, _NO_LINE)  # imports are recomputed anyway
    return _go_program(problem, prefix + "\n" + completion)


_GO_PACKAGE = re.compile(r"^[ \t]*package[ \t]+\w+[ \t]*\n?", re.MULTILINE)
_GO_IMPORT_BLOCK = re.compile(r"^[ \t]*import[ \t]*\((?P<specs>[^)]*)\)[ \t]*\n?", re.MULTILINE)
_GO_SPEC = re.compile(r"(?:(?P<alias>[\w.]+)[ \t]+)?\"(?P<path>[^\"]+)\"")
_GO_IMPORT_LINE = re.compile(rf"^[ \t]*import[ \t]+(?P<specs>{_GO_SPEC.pattern})[ \t]*\n?", re.MULTILINE)


def _split_go_imports(code: str) -> tuple[list[tuple[str, str]], str]:
    """([(package name, import spec)], code without package clause and imports)."""
    specs = []
    for regex in (_GO_IMPORT_BLOCK, _GO_IMPORT_LINE):
        for match in regex.finditer(code):
            for spec in _GO_SPEC.finditer(match.group("specs")):
                package = spec.group("alias") or spec.group("path").rsplit("/", 1)[-1]
                specs.append((package, spec.group(0)))
        code = regex.sub("", code)
    return specs, _GO_PACKAGE.sub("", code)


def _go_program(problem: dict, code: str) -> str:
    """package main + the imports the code and test reference + code + test. Go rejects unused
    imports, so every candidate (test setup, the code's own, the prompt's, common helpers) is kept
    only if `name.` appears; one import per package name, the test setup's first."""
    setup_specs, _ = _split_go_imports(problem["test_setup"])
    code_specs, code = _split_go_imports(code)
    prompt_specs, _ = _split_go_imports(problem.get("import", ""))
    helper_specs = [(path.rsplit("/", 1)[-1], f'"{path}"') for path in _GO_HELPER_IMPORTS]
    test = problem["test"]
    used = _blank_comments(code + "\n" + test, "go")  # "a list of strings." in a comment is no use
    chosen: dict[str, str] = {}
    for package, spec in setup_specs + code_specs + prompt_specs + helper_specs:
        if package in chosen or package in ("_", "."):
            continue
        if re.search(rf"\b{re.escape(package)}\.", used):
            chosen[package] = spec
    imports = "".join(f"    {spec}\n" for spec in chosen.values())
    return f"package main\n\nimport (\n{imports})\n\n{code}\n{test}\n"


def _remove_block(code: str, start: re.Pattern) -> str:
    """`code` without the first brace-delimited block whose header matches `start` (a `main` the
    model wrote to demo its function would clash with the test's)."""
    match = start.search(code)
    if not match:
        return code
    open_brace = code.find("{", match.end())
    close = _matching_brace(code, open_brace) if open_brace >= 0 else -1
    return code if close < 0 else code[: match.start()] + code[close + 1:]


def _matching_brace(code: str, open_index: int) -> int:
    """Index of the `}` closing `code[open_index]`, skipping strings, chars and comments; -1 if none."""
    code = _blank_comments(code, "cpp")
    depth, i = 0, open_index
    while i < len(code):
        if code[i] in "\"'":
            i = _skip_string(code, i)
            continue
        depth += code[i] == "{"
        depth -= code[i] == "}"
        if depth == 0:
            return i
        i += 1
    return -1


_FULL_BUILDERS = {"python": _python_full, "cpp": _cpp_full, "java": _java_full, "js": _js_full, "go": _go_full}
_BODY_BUILDERS = {"python": _python_body, "cpp": _cpp_body, "java": _java_body, "js": _js_body, "go": _go_body}


# ------------------------------------------------------------------------------------- running


@dataclass
class _Step:
    """One process of a run: a compile step's failure is a compile error, a run step's a failed test."""

    argv: list[str]
    timeout: float
    memory_mb: int | None  # RLIMIT_AS; None for runtimes that reserve huge address space (JVM, V8)
    file_mb: int
    compile: bool = False
    fail_marker: str | None = None  # stderr text that fails a run even with exit code 0


def run_program(program: str, language: str, timeout: float = 10.0, memory_mb: int = 2048) -> ExecutionResult:
    """Compile (if needed) and run `program` in a fresh temporary directory; "passed" iff it exits 0
    (and, for JS, printed no "Assertion failed": node's console.assert does not throw).

    `timeout` is the wall-clock limit of the run itself (CPU time is capped just above it);
    compiling has its own COMPILE_TIMEOUT. `memory_mb` caps the address space of python and native
    binaries, the heap (-Xmx) of the JVM and the old space of node. Safe to call from a thread
    pool: between fork and exec the child only sets rlimits.
    """
    _check_language(language)
    if not toolchain_available(language):
        return _skipped(language)
    with tempfile.TemporaryDirectory(prefix="space-exec-", ignore_cleanup_errors=True) as root:
        workdir = Path(root) / "work"
        workdir.mkdir()
        steps = _PLANS[language](workdir, program, timeout, memory_mb)
        env = _environment(language, Path(root))
        for index, step in enumerate(steps):
            result = _run_step(step, workdir, env, Path(root) / f"step{index}")
            if result is not None:
                return result
        return ExecutionResult("passed")


def check_completion(problem: dict, completion_text: str, language: str, timeout: float = 10.0) -> ExecutionResult:
    """Run the tests of `problem` on a model's raw answer: extract_code, build_program, run_program."""
    if not toolchain_available(language):  # skip before building: no need to parse what cannot run
        return _skipped(language)
    code = extract_code(completion_text, language)
    return run_program(build_program(problem, code, language), language, timeout=timeout)


def _skipped(language: str) -> ExecutionResult:
    return ExecutionResult("skipped", f"{language} toolchain not found on PATH: needs {', '.join(_TOOLS[language])}")


def _plan_python(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[_Step]:
    (workdir / "solution.py").write_text(program, encoding="utf-8")
    # -I: no PYTHON* variables, no user site, no script dir shadowing; the test sees only the stdlib
    # and this interpreter's site-packages.
    return [_Step([sys.executable, "-I", "solution.py"], timeout, memory_mb, RUN_FILE_MB)]


def _plan_cpp(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[_Step]:
    (workdir / "solution.cpp").write_text(program, encoding="utf-8")
    compile_argv = ["g++", "-std=c++17", "-O0", "-o", "solution", "solution.cpp"]
    if "openssl/" in program:  # string_to_md5 (CPP/162) uses OpenSSL's MD5; linking it otherwise costs time
        compile_argv.append("-lcrypto")
    return [
        _Step(compile_argv, COMPILE_TIMEOUT, COMPILE_MEMORY_MB, COMPILE_FILE_MB, compile=True),
        _Step(["./solution"], timeout, memory_mb, RUN_FILE_MB),
    ]


# A JVM for a few asserts: one GC thread and the quick JIT start faster and use less CPU.
_JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


def _plan_java(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[_Step]:
    (workdir / "Main.java").write_text(program, encoding="utf-8")  # the test is `public class Main`
    javac = ["javac", "-nowarn", "-encoding", "UTF-8"] + [f"-J{flag}" for flag in _JVM_FLAGS] + ["Main.java"]
    java = ["java", f"-Xmx{memory_mb}m"] + _JVM_FLAGS + ["-cp", ".", "Main"]
    return [
        _Step(javac, COMPILE_TIMEOUT, None, COMPILE_FILE_MB, compile=True),
        _Step(java, timeout, None, RUN_FILE_MB),
    ]


# JavaScript/162's canonical solution requires the npm package js-md5, which cannot be installed
# offline; node's own crypto gives the same hex digest.
_JS_MD5 = """const crypto = require('crypto')
const md5 = (text) => crypto.createHash('md5').update(text).digest('hex')
md5.hex = md5
module.exports = md5
"""


def _plan_js(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[_Step]:
    (workdir / "solution.js").write_text(program, encoding="utf-8")
    (workdir / "node_modules" / "js-md5").mkdir(parents=True)
    (workdir / "node_modules" / "js-md5" / "index.js").write_text(_JS_MD5, encoding="utf-8")
    node = ["node", f"--max-old-space-size={memory_mb}", "solution.js"]
    # node's console.assert prints "Assertion failed" and carries on: the exit code alone says nothing.
    return [_Step(node, timeout, None, RUN_FILE_MB, fail_marker="Assertion failed")]


# The tests import testify's assert; a module proxy is not reachable offline, so a local module
# with testify's equality rule (ObjectsAreEqual: reflect.DeepEqual, bytes compared by content)
# stands in for it through a `replace` directive.
_GO_MOD = """module humaneval

go 1.18

require github.com/stretchr/testify v1.8.4

replace github.com/stretchr/testify => ./testify
"""
_GO_ASSERT = """// Package assert: an offline stand-in for testify's assert (New, Equal) with testify's equality rule.
package assert

import (
\t"bytes"
\t"reflect"
\t"testing"
)

type Assertions struct{ t *testing.T }

func New(t *testing.T) *Assertions { return &Assertions{t} }

func (a *Assertions) Equal(expected, actual interface{}, msgAndArgs ...interface{}) bool {
\ta.t.Helper()
\treturn Equal(a.t, expected, actual, msgAndArgs...)
}

func Equal(t *testing.T, expected, actual interface{}, msgAndArgs ...interface{}) bool {
\tt.Helper()
\tif ObjectsAreEqual(expected, actual) {
\t\treturn true
\t}
\tt.Errorf("Not equal:\\nexpected: %#v\\nactual  : %#v", expected, actual)
\treturn false
}

func ObjectsAreEqual(expected, actual interface{}) bool {
\tif expected == nil || actual == nil {
\t\treturn expected == actual
\t}
\texp, ok := expected.([]byte)
\tif !ok {
\t\treturn reflect.DeepEqual(expected, actual)
\t}
\tact, ok := actual.([]byte)
\tif !ok {
\t\treturn false
\t}
\tif exp == nil || act == nil {
\t\treturn exp == nil && act == nil
\t}
\treturn bytes.Equal(exp, act)
}
"""


def _plan_go(workdir: Path, program: str, timeout: float, memory_mb: int) -> list[_Step]:
    (workdir / "go.mod").write_text(_GO_MOD, encoding="utf-8")
    shim = workdir / "testify"
    (shim / "assert").mkdir(parents=True)
    (shim / "go.mod").write_text("module github.com/stretchr/testify\n\ngo 1.18\n", encoding="utf-8")
    (shim / "assert" / "assert.go").write_text(_GO_ASSERT, encoding="utf-8")
    (workdir / "main_test.go").write_text(program, encoding="utf-8")
    # vet is off: a style complaint is not a failed test. The go tool and its runtime reserve large
    # address ranges, so only the test binary gets an address-space cap.
    build = ["go", "test", "-c", "-vet=off", "-o", "humaneval.test", "."]
    return [
        _Step(build, COMPILE_TIMEOUT, None, COMPILE_FILE_MB, compile=True),
        _Step(["./humaneval.test"], timeout, memory_mb, RUN_FILE_MB),
    ]


_PLANS = {"python": _plan_python, "cpp": _plan_cpp, "java": _plan_java, "js": _plan_js, "go": _plan_go}


def _environment(language: str, root: Path) -> dict[str, str]:
    """Only what the toolchains need: nothing of the caller's environment leaks into the program."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8"}
    if language == "go":
        env.update(
            # The build cache outlives one run: rebuilding the testing package every time costs seconds.
            GOCACHE=os.environ.get("GOCACHE") or str(Path(tempfile.gettempdir()) / "space-eval-gocache"),
            GOPATH=str(root / "gopath"),
            GOFLAGS="-mod=mod",
            GOPROXY="off",
            GOTOOLCHAIN="local",
            GOTELEMETRY="off",
            GO111MODULE="on",
            CGO_ENABLED="0",
        )
    return env


def _run_step(step: _Step, workdir: Path, env: dict[str, str], log: Path) -> ExecutionResult | None:
    """Run one step; None if it succeeded, else the result that ends the run."""
    try:
        returncode, stderr, stdout = _execute(step, workdir, env, log)
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


def _execute(step: _Step, workdir: Path, env: dict[str, str], log: Path) -> tuple[int | None, str, str]:
    """(returncode or None on timeout, stderr, stdout). Output goes to files, so the file-size limit
    caps it and a chatty program cannot fill the parent's memory or block on a full pipe."""
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            step.argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,  # its own process group, so a timeout kills its children too
            preexec_fn=_limits(step),
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


def _limits(step: _Step):
    """preexec_fn setting the step's rlimits in the child. No RLIMIT_NPROC: it counts every process
    of the user on the machine, so a cap that stops a fork bomb breaks parallel evaluation."""
    cpu = math.ceil(step.timeout) + 1

    def apply() -> None:
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


# ------------------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 from n samples of which c pass: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise SpaceError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples holds a passing one
        return 1.0
    # The ratio of binomials as a product of k-ish factors: no huge integers, no cancellation.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
