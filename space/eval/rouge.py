"""ROUGE-L F-measure (Lin 2004) on lower-cased word tokens, without external dependencies."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    candidate, gold = tokens(prediction), tokens(reference)
    if not candidate or not gold:
        return 0.0
    common = lcs_length(candidate, gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(gold)
    return 2 * precision * recall / (precision + recall)
