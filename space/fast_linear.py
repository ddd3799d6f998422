"""Faster decoding-size linear layers on CPU.

Decoding multiplies one row (AR) or a handful of rows (1 + k(k+2) for SPACE) by every weight
matrix, so a step is bound by reading the weights. On the x86 CPU we measured (AMD EPYC, MKL),
the product's formulation matters more than its size (docs/benchmarks.md):

* one row: `x @ W_t` with a `[in, out]` copy of the weight streams it ~1.5x faster than
  `F.linear(x, W)` (SmolLM2's lm_head: 6.5 ms instead of 11.3 ms);
* 2 to ~36 rows: `(W @ x.T).T` is up to 3.5x faster than `F.linear` (lm_head, 3 rows: 9.4 ms
  instead of 37.7 ms; 4 rows cost about what one row does).

`use_fast_linear(model)` switches every `nn.Linear` to `RowsLinear`, which only changes how the
product is computed: same parameters and state dict, same math, different rounding order. Only fp32
inputs take these paths: they were measured in fp32, and in bf16 the one-row `x @ W_t` ran about 10x
slower than `F.linear` on this CPU (0.26 vs 2.9 ms for a 1536x576 weight), so half precision keeps
`F.linear`. It keeps
a transposed copy of each weight (the model's weight memory doubles), so it is for inference:
training, gradients and non-CPU devices take the plain `F.linear` path. `space.load_model`
applies it on CPU, to the shared model object, so every method (AR, HF generate, SPACE ...) runs
on the same kernels and comparisons stay fair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RowsLinear(nn.Linear):
    """`nn.Linear` with decode-friendly CPU products; keeps a `[in, out]` copy of `weight`."""

    def transposed_weight(self) -> torch.Tensor:
        """The `[in, out]` copy, retaken whenever the weight was replaced or changed in place."""
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape))
        if getattr(self, "_weight_t_key", None) != key:
            self._weight_t = self.weight.detach().t().contiguous()
            self._weight_t_key = key
        return self._weight_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad) or x.device.type != "cpu"
                or x.dtype != torch.float32):  # measured on fp32 only; in bf16 `x @ W_t` is ~10x slower than F.linear
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 1:
            out = rows @ self.transposed_weight()  # [1, out]
        else:
            out = torch.mm(self.weight, rows.t()).t()  # [rows, out], a transposed view
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_fast_linear(model: nn.Module) -> int:
    """Switch every plain `nn.Linear` in `model` to `RowsLinear` in place; returns how many.

    The transposed copies are taken on first use and retaken if a weight changes (e.g. a resize).
    """
    switched = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = RowsLinear
            switched += 1
    return switched
