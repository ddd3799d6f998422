"""Assemble one runnable test program per language from a HumanEval-X problem and extracted code.

Owns the rules of `build_program` (whole function or body, what of the prompt to keep, includes and
imports to add). Running the program is `space.eval.code.sandbox`'s job.
"""

from __future__ import annotations

import re
import textwrap

from space.eval.code.syntax import blank_comments, defines, entry_point, find_definitions, remove_block
from space.eval.datasets import check_language

# Headers HumanEval-X solutions commonly use without including them; CodeGeeX's harness adds the same.
_CPP_INCLUDES = (
    "#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
    "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>", "#include<iostream>",
)
# Go refuses unused imports, so these are added only when the code names them (as CodeGeeX does).
_GO_HELPER_IMPORTS = (
    "math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5",
)


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
    check_language(language)
    name = entry_point(problem, language)
    if defines(completion, name, language):
        return _FULL_BUILDERS[language](problem, completion, name)
    return _BODY_BUILDERS[language](problem, completion)


def _prompt_before_entry(problem: dict, name: str, language: str) -> str:
    """The prompt before the entry point's definition: its imports and helper functions."""
    matches = find_definitions(problem["prompt"], language, re.escape(name))
    return problem["prompt"][: matches[-1].start()] if matches else ""


_NO_LINE = re.compile(r"(?!)")  # a `header` for languages whose prompt prefix has nothing to keep


def _prompt_prefix(problem: dict, name: str, language: str, completion: str, header: re.Pattern) -> str:
    """`_prompt_before_entry`, or only its `header` lines when the completion redefines a helper
    (a second definition would not compile)."""
    prefix = _prompt_before_entry(problem, name, language)
    helpers = [m.group("name") for m in find_definitions(prefix, language)]
    if any(defines(completion, helper, language) for helper in helpers):
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
    code = remove_block(completion, _CPP_MAIN)
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
    code = remove_block(code, _JAVA_MAIN_CLASS)
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
    used = blank_comments(code + "\n" + test, "go")  # "a list of strings." in a comment is no use
    chosen: dict[str, str] = {}
    for package, spec in setup_specs + code_specs + prompt_specs + helper_specs:
        if package in chosen or package in ("_", "."):
            continue
        if re.search(rf"\b{re.escape(package)}\.", used):
            chosen[package] = spec
    imports = "".join(f"    {spec}\n" for spec in chosen.values())
    return f"package main\n\nimport (\n{imports})\n\n{code}\n{test}\n"


_FULL_BUILDERS = {"python": _python_full, "cpp": _cpp_full, "java": _java_full, "js": _js_full, "go": _go_full}
_BODY_BUILDERS = {"python": _python_body, "cpp": _cpp_body, "java": _java_body, "js": _js_body, "go": _go_body}
