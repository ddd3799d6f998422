"""Watching a decode as it goes: an HF streamer and a per-step callback (`streamer=` and `on_step=` of
`space.decode`).

The streamer follows transformers' protocol, as `model.generate(streamer=...)` drives it: `put` the prompt ids
first (`TextStreamer(skip_prompt=True)` drops exactly that call), then each forward's committed tokens as one
`put` of 1 to k+1 ids (how HF's own assisted decoding streams), and `end()` once the answer is complete. Any
object with `put` and `end` works: `TextStreamer`, `TextIteratorStreamer` read from another thread, or a
recorder. `on_step(step)` gets a `Step` after each forward that committed tokens: its index, the tokens and the
seconds since the decode began, for time to first token and inter-step latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from space.errors import SpaceError


@dataclass(frozen=True)
class Step:
    """One forward's commit, as `on_step` sees it."""

    index: int  # 0: the forward that produced the first token (the prefill)
    tokens: list[int]  # committed by this forward (cut at EOS and at max_new_tokens)
    seconds: float  # since the decode began, when these tokens were committed


def check_observers(streamer, on_step) -> None:
    """One line for a streamer without `put`/`end` or an `on_step` that cannot be called."""
    if streamer is not None and not all(callable(getattr(streamer, name, None)) for name in ("put", "end")):
        raise SpaceError(f"streamer must have put() and end() like transformers' streamers (got "
                         f"{type(streamer).__name__})")
    if on_step is not None and not callable(on_step):
        raise SpaceError(f"on_step must be callable with one Step (got {type(on_step).__name__})")


class Observer:
    """Relays one decode's progress to its streamer and its `on_step` callback (`of` gives None when neither
    is set, so an unobserved decode does no extra work)."""

    def __init__(self, streamer, on_step, budget: int):
        self.streamer, self.on_step, self.budget = streamer, on_step, budget
        self.started = time.perf_counter()
        self.steps = 0
        self.emitted = 0
        self.ended = False

    @classmethod
    def of(cls, options) -> "Observer | None":
        if options.streamer is None and options.on_step is None:
            return None
        return cls(options.streamer, options.on_step, options.max_new_tokens)

    def start(self, prompt: torch.Tensor) -> None:
        """The prompt, as HF's generate puts it first (`[1, n]` on the CPU)."""
        if self.streamer is not None:
            self.streamer.put(prompt.detach().reshape(1, -1).cpu())

    def step(self, tokens: list[int]) -> None:
        """A forward's committed tokens (never past the budget)."""
        tokens = tokens[: self.budget - self.emitted]
        if not tokens:
            return
        self.emitted += len(tokens)
        if self.streamer is not None:
            self.streamer.put(torch.tensor(tokens, dtype=torch.long))
        if self.on_step is not None:
            self.on_step(Step(self.steps, list(tokens), time.perf_counter() - self.started))
        self.steps += 1

    def end(self) -> None:
        if not self.ended and self.streamer is not None:
            self.streamer.end()
        self.ended = True


class StreamRelay:
    """A streamer handed to HF's `generate` (the `hf` and `prompt_lookup` baselines) that feeds an `Observer`: its
    first `put` is the prompt, each later one a forward's tokens."""

    def __init__(self, observer: Observer):
        self.observer = observer
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            self.observer.start(value)
        else:
            self.observer.step(value.reshape(-1).tolist())

    def end(self) -> None:
        self.observer.end()
