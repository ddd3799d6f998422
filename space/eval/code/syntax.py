"""Just enough syntax of the five HumanEval-X languages to assemble a test program: where a function
is defined (never where it is called), comments and string literals (so a doc comment's words are not
taken for code), and brace-delimited blocks. Regular expressions, not parsers: they cover the shapes
the dataset and chat answers take."""

from __future__ import annotations

import re

from space.errors import SpaceError

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


def find_definitions(code: str, language: str, name: str = r"\w+") -> list[re.Match]:
    """Definitions of `name` (a regex) in `code`, comments ignored; offsets are those of `code`."""
    return list(_definition_regex(language, name).finditer(blank_comments(code, language)))


def defines(code: str, name: str, language: str) -> bool:
    return bool(find_definitions(code, language, re.escape(name)))


def entry_point(problem: dict, language: str) -> str:
    """Name of the function the tests call: python's `check(NAME)` line, else the last function
    defined in the prompt (helpers such as `is_palindrome` come before it)."""
    if language == "python":
        calls = re.findall(r"^check\((\w+)\)", problem["test"], re.MULTILINE)
        if calls:
            return calls[-1]
    names = [m.group("name") for m in find_definitions(problem["prompt"], language)]
    if not names:
        raise SpaceError(f"no function definition found in the prompt of {problem.get('task_id')}")
    return names[-1]


def blank_comments(code: str, language: str) -> str:
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


def remove_block(code: str, start: re.Pattern) -> str:
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
    code = blank_comments(code, "cpp")
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
