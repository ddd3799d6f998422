"""Many prompts in one forward per step: the loop of every decoder that batches, for one prompt or many.

A batching decoder writes its step as a *row*, one per prompt, with the named steps of the single-prompt loops:

* `plan()`: the step's candidate tree as `space.decoding.tree_shape.plan_steps` (None: nothing to plan, AR);
* `feed(seen, tree)`: the row's `ForwardInputs` (its cache holds `seen` committed tokens) and the first fed row
  whose logits it reads;
* `take(hidden, logits)`: verify and commit from those rows; returns what its cache keeps, `(prefix, sources)`
  (None: every entry it fed);
* `finished`, and `run` (its `space.decoding.common.Run`: output, sampler, stats).

`run_rows` plans every row's tree together (`plan_batch`: the price of a step is that of the whole batch's rows,
so each sequence gets fewer candidates as the batch grows), feeds all rows in one forward (`Model.feed`), runs
lm_head once over every row's read rows, lets each row verify and commit on its own, and keeps each row's accepted
KV entries in place (`CompactCache.compact_rows`). A row that finishes leaves the batch (`keep_rows`), so it
costs nothing more, and with a `batch_size` below the number of prompts the next waiting prompt takes its place
(continuous batching): prefilled on its own, then stepping with the others.

Why one length per row and no realignment: left-padding rows to a common length and copying every row back
into alignment after each step (what HF's unmerged batched assisted decoding and ReDrafter do) moves every row's
whole cache whenever rows accept different counts, which in speculative decoding is nearly every step. Here a
row's entries never move except its own accepted ones, and the mask hides the columns past a row's own length.
"""

from __future__ import annotations

from typing import Callable

import torch

from space.cache import CompactCache
from space.decoding.common import Model
from space.decoding.tree_shape import plan_batch


@torch.inference_mode()
def run_rows(target: Model, rows: list, use_cache: bool, capacity: int,
             price: Callable[[int], float] | None = None, max_rows: int = 0, batch_size: int | None = None) -> None:
    """Decode every row to its end; `capacity` is a hint for the cache's length, `price` and `max_rows` the step
    budget of the rows' trees (`space.decoding.tree.shape_config`). `batch_size`: at most that many rows decode at
    once, and a finished row's place goes to the next waiting one (continuous batching); None: all at once."""
    batch_size = len(rows) if batch_size is None else batch_size
    active, waiting = list(rows[:batch_size]), list(rows[batch_size:])
    cache = CompactCache.for_model(target.model, capacity, len(active)) if use_cache else None
    while active:
        seen = cache.row_lengths if cache is not None else [0] * len(active)
        plans = [row.plan() for row in active]
        planned = iter(plan_batch([plan for plan in plans if plan is not None], price, max_rows)
                       if any(plan is not None for plan in plans) else ())
        fed = [row.feed(row_seen, None if plan is None else next(planned))
               for row, row_seen, plan in zip(active, seen, plans)]
        hidden = target.feed([inputs for inputs, _ in fed], cache)
        read = [rows_of[start:] for rows_of, (_, start) in zip(hidden, fed)]
        logits = target.logits(torch.cat(read) if len(read) > 1 else read[0])
        keeps = [row.take(rows_hidden, rows_logits)
                 for row, rows_hidden, rows_logits in zip(active, read, logits.split([r.shape[0] for r in read]))]
        # each row keeps its accepted entries; a finished row's place goes to the next waiting prompt, or is dropped
        ended = [i for i, row in enumerate(active) if row.finished]
        if cache is not None:
            keep_entries(cache, [(None, 0) if row.finished else (keep, row_seen + inputs.ids.shape[0])
                                 for row, keep, row_seen, (inputs, _) in zip(active, keeps, seen, fed)])
        for i in ended:
            if waiting:
                active[i] = waiting.pop(0)
                if cache is not None:
                    cache.replace_row(i, prefill(target, active[i], capacity))
        going = [i for i, row in enumerate(active) if not row.finished]
        if len(going) < len(active):  # nothing waits for these places: the batch shrinks
            if cache is not None and going:
                cache.keep_rows(going)
            active = [active[i] for i in going]


def keep_entries(cache: CompactCache, kept: list[tuple]) -> None:
    """After a step, each row's cache: `(keep, fed_to)` per row, `keep` = `(prefix, sources)` from its `take`, or None
    to keep every entry it was fed up to `fed_to`."""
    if any(keep is not None for keep, _ in kept):
        empty = torch.empty(0, dtype=torch.long)
        cache.compact_rows([keep if keep is not None else (length, empty) for keep, length in kept])
    elif len(kept) > 1 or cache.length != kept[0][1]:  # several rows, or one left of several: each its own length
        cache.set_row_lengths([length for _, length in kept])


def prefill(target: Model, row, capacity: int) -> CompactCache:
    """A cache of one row holding a waiting row's prompt but its last token (which its first step feeds, as every
    row's first step does): the row joins a running batch without widening the batch's next forward to its prompt.
    This forward chooses no token, so it is not one of the row's steps."""
    cache = CompactCache.for_model(target.model, capacity, 1)
    prompt = row.run.out.committed()
    if prompt.shape[0] > 1:
        target.feed([target.chunk_inputs(prompt[:-1], 0)], cache)
    return cache


def row_seeds(seed: int | None, count: int, seed_range: tuple[int, int]) -> list[int | None]:
    """Row i's seed: `seed + i` (wrapped into torch's range), so rows of one prompt sample independently and the same
    batch with the same seed samples the same; None stays None (a fresh random seed per row). An AR row reruns
    alone with `space.decode(..., seed=seed + i)`; a SPACE row's trees depend on the batch, and so do its draws."""
    if seed is None:
        return [None] * count
    low, high = seed_range
    return [low + (seed + i - low) % (high - low + 1) for i in range(count)]
