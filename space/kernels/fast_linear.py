"""Faster decoding-size linear layers on CPU: oneDNN products on prepacked weights.

Decoding multiplies one row (AR) or a handful of rows (1 + k(k+2) for SPACE) by every weight
matrix, so a step is bound by reading the weights. How fast a CPU product reads them depends on the
weight's memory layout more than on the number of rows: PyTorch's `F.linear` on a plain row-major
weight runs SmolLM2-135M's 211 products of one row at about 48 ms, 2.7x the time its weights take to
stream at the measured bandwidth, and grows to 75 ms for 16 rows (docs/benchmarks.md, issue 18).

`RowsLinear` computes the product with oneDNN on a copy of the weight reordered once into oneDNN's
blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the packing `torch.compile`'s CPU backend
uses for frozen linear layers): about 29 ms for one row and 30 ms for 16 in fp32, and it also serves
bf16 (where oneDNN uses the CPU's bf16 instructions). The packing is chosen for `PACKED_ROWS` rows,
which measured fastest for one row and for SPACE's 16 alike.

Where the packed op is missing (a PyTorch build without oneDNN) or for fp16, it falls back to the
earlier formulations (fp32: `x @ W_t` for one row, `(W @ x.T).T` for several; otherwise `F.linear`).
`use_fast_linear(model)` switches every `nn.Linear` to `RowsLinear`: same parameters and state
dict, same math, another rounding order. It keeps a second copy of each weight (the model's weight
memory doubles), so it is for inference: training, gradients and non-CPU devices take `F.linear`.
`space.load_model` applies it on CPU to the shared model object, so every method (AR, HF generate,
SPACE ...) runs on the same kernels and comparisons stay fair.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from space.weights import derived

PACKED_ROWS = 16  # the row count the blocked layout is chosen for (measured: fastest for 1 and for 16 rows)
PACKED_DTYPES = (torch.float32, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def packed_products_available() -> bool:
    """Whether this PyTorch has oneDNN's prepacked linear (private ops: checked once, by use)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.ones(4, 8)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKED_ROWS)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 8), packed, None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 8.0)))
    except (AttributeError, RuntimeError):
        return False


class RowsLinear(nn.Linear):
    """`nn.Linear` with decode-friendly CPU products; keeps a second, reordered copy of `weight`."""

    def _copy(self, make) -> torch.Tensor:
        """The weight copy `make(weight)`, retaken whenever the weight was replaced or changed in place."""
        return derived(self.__dict__, "_weight_copy", (self.weight,), lambda: make(self.weight.detach()), make)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        if x.dtype in PACKED_DTYPES and x.dtype == self.weight.dtype and packed_products_available():
            out = packed_product(rows, self._copy(packed_weight), self.bias)
        elif x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        elif rows.shape[0] == 1:
            out = rows @ self._copy(_transposed)  # [1, out]
            out = out if self.bias is None else out + self.bias
        else:
            out = torch.mm(self.weight, rows.t()).t()  # [rows, out], a transposed view
            out = out if self.bias is None else out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def packed_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`rows` `[n, in]` times a `packed_weight` `[out, in]` (plus `bias`) with oneDNN -> `[n, out]`."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` `[out, in]` reordered into oneDNN's blocked layout for `_linear_pointwise`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACKED_ROWS)


def _transposed(weight: torch.Tensor) -> torch.Tensor:
    return weight.t().contiguous()


def use_fast_linear(model: nn.Module) -> int:
    """Switch every plain `nn.Linear` in `model` to `RowsLinear` in place; returns how many.

    The weight copies are taken on first use and retaken if a weight changes (e.g. a resize).
    """
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowsLinear
            switched += 1
    return switched
