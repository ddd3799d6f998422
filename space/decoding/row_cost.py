"""What a forward of N rows costs on this device, relative to one row: the price the tree's shape is chosen by.

The price is not linear in the rows. On 2 Zen 4 cores SmolLM2-135M costs the same from 1 to 8 rows, jumps
by a quarter at 9-10 and climbs by about 1 ms a row after that; a GPU should stay flat much longer (not measured
here: no GPU was lent). The decoder prices
rows with the device's curve (one measured by `scripts/bench_roofline.py --store_curves true` and shipped in
`space/configs/cost_curves/curves.json` for that device and dtype, else `DEVICE_CURVES`), with a curve measured
on the model itself when
asked (`SpaceOptions.cost_curve="measure"`: `measured_curve`, the median of 5 forwards per size after 256
cached tokens, once per model, device and dtype; about 4 s on that CPU), or with one the caller gives
(`{rows: ms}`, or the `CostCurve` that `space.bench.roofline.load_cost_curve` reads from a
`scripts/bench_roofline.py` report). The defaults are fixed so that a run
is repeatable: a measured curve moves by 10% from one measurement to the next on a busy machine, and with
it the trees.
"""

from __future__ import annotations

import bisect
import json
import math
import numbers
import time
import weakref
from dataclasses import dataclass

import torch

from space.cache import CompactCache
from space.io import shipped
from space.models import synchronize

MEASURED_ROWS = (1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 96, 128)
CONTEXT = 256  # cached tokens the measuring forwards attend to (a prompt and part of its answer)
REPEATS = 5


@dataclass
class CostCurve:
    """Measured ms of one forward of N rows (`rows` ascending, `measured_ms` per row count); the reader of
    `scripts/bench_roofline.py`'s reports (`space.bench.roofline.load_cost_curve`) returns one too."""

    rows: list[int]
    measured_ms: list[float]
    context_tokens: int | None = None

    @classmethod
    def from_points(cls, points) -> "CostCurve":
        """From `{rows: ms}` or `[(rows, ms), ...]`; made non-decreasing, as a forward never gets cheaper with rows."""
        pairs = list(points.items() if isinstance(points, dict) else points)
        # A row count is a whole number (2.5 would be cut to 2 silently) and a time a finite positive one (a
        # NaN compares false with everything and would price every tree as free).
        if not pairs or any(not (isinstance(r, numbers.Integral) and not isinstance(r, bool) and r >= 1)
                            or not (isinstance(m, numbers.Real) and not isinstance(m, bool) and 0 < m < math.inf)
                            for r, m in pairs):
            raise ValueError("a cost curve needs whole row counts >= 1 and finite positive times")
        items = sorted((int(r), float(m)) for r, m in pairs)
        rows, ms, top = [], [], 0.0
        for r, m in items:
            top = max(top, m)
            rows.append(r)
            ms.append(top)
        return cls(rows, ms)

    def ms(self, rows: float) -> float:
        """The cost of a forward of `rows` rows: measured where measured, linear between measured points,
        and beyond the range linear from the nearest two points (the last two above it)."""
        index = bisect.bisect_left(self.rows, rows)
        if index < len(self.rows) and self.rows[index] == rows:
            return self.measured_ms[index]
        if len(self.rows) == 1:
            return self.measured_ms[0]
        right = min(max(index, 1), len(self.rows) - 1)  # the segment [right - 1, right], an end one outside
        x0, x1 = self.rows[right - 1], self.rows[right]
        y0, y1 = self.measured_ms[right - 1], self.measured_ms[right]
        return y0 + (y1 - y0) * (rows - x0) / (x1 - x0)

    def price(self, n: int) -> float:
        """A forward of `n` rows against one of a single row; below the first measured size, that size's price."""
        first = self.rows[0]
        return self.ms(max(n, first)) / self.ms(first)


# Relative price per rows. cpu: SmolLM2-135M fp32, 2 Zen 4 cores, torch 2.13, the mean of three
# `measured_curve` runs on an idle machine (2026-12-02, docs/benchmarks.md). cuda: not measured here (no GPU
# was lent); a small model is launch-bound, so rows are taken as nearly free up to 128: measure on yours.
DEVICE_CURVES = {
    "cpu": {1: 1.0, 2: 1.0, 4: 1.01, 6: 1.09, 8: 1.13, 10: 1.24, 12: 1.28, 16: 1.36, 20: 1.42, 24: 1.46,
            32: 1.78, 40: 2.15, 48: 2.32},
    "cuda": {1: 1.0, 64: 1.05, 128: 1.15},
}


STORED_CURVES = ("configs", "cost_curves", "curves.json")  # package data: {"<device>/<dtype>": {rows, ms, ...}}


def stored_curves() -> dict:
    """The curves `scripts/bench_roofline.py --store_curves true` measured and stored in the package, by
    "<device type>/<dtype>" ({} when none is)."""
    path = shipped(*STORED_CURVES)
    return json.loads(path.read_text()) if path.is_file() else {}


def device_curve(device: torch.device, dtype: torch.dtype = torch.float32) -> CostCurve:
    """The device's curve for `dtype`: the stored measurement where there is one, else `DEVICE_CURVES`."""
    stored = stored_curves().get(f"{device.type}/{str(dtype).removeprefix('torch.')}")
    if stored is not None:
        return CostCurve.from_points(zip(stored["rows"], stored["ms"]))
    return CostCurve.from_points(DEVICE_CURVES["cpu" if device.type == "cpu" else "cuda"])


_MEASURED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def measured_curve(target, max_rows: int) -> CostCurve:
    """The curve of `target` (a `space.decoding.common.Model`) up to `max_rows`, measured once per model, device
    and dtype: the median of `REPEATS` forwards per size after `CONTEXT` cached tokens."""
    key = (target.device, target.dtype, max_rows)
    per_model = _MEASURED.setdefault(target.model, {})
    if key not in per_model:
        per_model[key] = _measure(target, [r for r in MEASURED_ROWS if r < max_rows] + [max_rows])
    return per_model[key]


@torch.inference_mode()
def _measure(target, sizes: list[int]) -> CostCurve:
    device = target.device
    vocab = target.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (CONTEXT + max(sizes),), generator=generator).to(device)
    cache = CompactCache.for_model(target.model, CONTEXT + max(sizes))
    target.hidden(ids[:CONTEXT], torch.arange(CONTEXT, device=device), None, cache)
    times: dict[int, list[float]] = {rows: [] for rows in sizes}
    # round-robin over the sizes, so a slow moment of the machine lands on every size alike
    for repeat in range(REPEATS + 1):  # the first round warms up
        for rows in sizes:
            cache.truncate(CONTEXT)
            causal = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
            inputs = target.chunk_inputs(ids[:CONTEXT], CONTEXT, ids[CONTEXT : CONTEXT + rows], causal,
                                         torch.arange(rows, device=device))
            synchronize(device)
            start = time.perf_counter()
            hidden = target.hidden(inputs.ids, inputs.positions, inputs.mask, cache)
            target.logits(hidden)
            synchronize(device)
            if repeat:
                times[rows].append(time.perf_counter() - start)
    points = {rows: sorted(values)[len(values) // 2] * 1000 for rows, values in times.items()}
    return CostCurve.from_points(points)
