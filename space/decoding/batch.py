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
costs nothing more.

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
             price: Callable[[int], float] | None = None, max_rows: int = 0) -> None:
    """Decode every row to its end; `capacity` is a hint for the cache's length, `price` and `max_rows` the step
    budget of the rows' trees (`space.decoding.tree.shape_config`)."""
    cache = CompactCache.for_model(target.model, capacity, len(rows)) if use_cache else None
    active = list(rows)
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
        going = [i for i, row in enumerate(active) if not row.finished]
        if len(going) < len(active):  # finished rows leave first: nothing of theirs is moved
            if cache is not None and going:
                cache.keep_rows(going)
            active = [active[i] for i in going]
        if cache is None or not going:
            continue
        kept = [(keeps[i], seen[i] + fed[i][0].ids.shape[0]) for i in going]
        if any(keep is not None for keep, _ in kept):
            empty = torch.empty(0, dtype=torch.long)
            cache.compact_rows([keep if keep is not None else (length, empty) for keep, length in kept])
        elif len(going) > 1:
            cache.set_row_lengths([length for _, length in kept])
        elif cache.length != kept[0][1]:  # one row left of several: its own length
            cache.set_row_lengths([kept[0][1]])


def row_seeds(seed: int | None, count: int, seed_range: tuple[int, int]) -> list[int | None]:
    """Row i's seed: `seed + i` (wrapped into torch's range), so rows of one prompt sample independently and the same
    batch with the same seed samples the same; None stays None (a fresh random seed per row). An AR row reruns
    alone with `space.decode(..., seed=seed + i)`; a SPACE row's trees depend on the batch, and so do its draws."""
    if seed is None:
        return [None] * count
    low, high = seed_range
    return [low + (seed + i - low) % (high - low + 1) for i in range(count)]
