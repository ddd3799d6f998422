"""Pull the code out of a chat model's answer: the fenced block of the language, else any fenced
block, else the whole text. Owns nothing else: program assembly is `programs`, running `sandbox`."""

from __future__ import annotations

import re

from space.eval.datasets import check_language

FENCE_TAGS = {
    "python": {"python", "py", "python3"},
    "cpp": {"cpp", "c++", "cc", "cxx", "c"},
    "java": {"java"},
    "js": {"javascript", "js", "node", "nodejs"},
    "go": {"go", "golang"},
}

_OPEN_FENCE = re.compile(r"^([ \t]*)```[ \t]*([^\s`]*)")
_CLOSE_FENCE = re.compile(r"^[ \t]*```[ \t]*$")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
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
    check_language(language)
    blocks = fenced_blocks(text)
    for tag, code in blocks:
        if tag == "" or tag in FENCE_TAGS[language]:
            return code
    return blocks[0][1] if blocks else text
