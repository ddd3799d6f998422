"""Copies from the context: the continuation of the longest n-gram match (prompt lookup, Saxena 2023).

`NgramIndex` keeps, for every n-gram of length 1..`max_ngram` seen in the prompt and the generated text,
where its latest occurrence ended. Indexing a token costs `max_ngram` dictionary writes and a lookup
`max_ngram` reads, whatever the context length, where HF's prompt lookup rescans the whole context every
step. The latest occurrence wins: in code and chat the nearest repeat is the likeliest to continue alike.
"""

from __future__ import annotations

from space.decoding.drafts import Drafts


class NgramIndex:
    """The context's tokens and, per n-gram (n <= `max_ngram`), the end of its latest occurrence that has a
    token after it."""

    def __init__(self, max_ngram: int = 4):
        if max_ngram < 1:
            raise ValueError(f"max_ngram must be >= 1 (got {max_ngram})")
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}

    def extend(self, tokens) -> None:
        for token in tokens:
            self.tokens.append(int(token))
            # The n-grams ending one token back now have a continuation: index them.
            end = len(self.tokens) - 2
            for n in range(1, min(self.max_ngram, end + 1) + 1):
                self._ends[tuple(self.tokens[end - n + 1 : end + 1])] = end

    def lookup(self, max_tokens: int, after: tuple[int, ...] = ()) -> Drafts:
        """A copy (`Drafts` of origin "copy"): up to `max_tokens` tokens that followed the latest earlier occurrence
        of the longest suffix of the context, extended by the drafted tokens `after`, that the index holds; its
        `match` is that suffix's length (0 and no tokens when nothing matched)."""
        if max_tokens >= 1:
            tail = (self.tokens[-self.max_ngram:] + list(after))[-self.max_ngram:]
            for n in range(min(self.max_ngram, len(tail)), 0, -1):
                end = self._ends.get(tuple(tail[-n:]))
                if end is not None:
                    return Drafts(self.tokens[end + 1 : end + 1 + max_tokens], origin="copy", match=n, after=len(after))
        return Drafts(origin="copy", after=len(after))
