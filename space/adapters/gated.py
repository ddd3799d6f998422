"""Gated LoRA: adapter deltas that act only on rows whose input is a mask token, so every real token is the base's.

SPACE verifies drafts with the very model that drafts them. With an ordinary fine-tune (full or LoRA) that
model is a new one: its answers differ from the base's. A gated adapter (after "Your LLM Knows the Future",
arXiv 2507.11851) adds its low-rank delta `B A x` to a linear layer's output only at the rows of mask inputs,
and gives mask inputs their own trainable embeddings. A real token never attends to a mask row (not in
training samples, not in a decoding step), so its hidden states, its logits and its keys and values in the
KV cache are computed by the untouched base weights on the same inputs: bit-identical to the base model.
SPACE's output is then the base model's own, token for token.

Pieces (nothing is wrapped, so module names, the state dict's base keys, tied weights, `use_fast_linear` and
`use_lean_layers` all see the model they expect):

* `RowGate`: the flat indices (over batch x sequence) of the current forward's mask rows. A pre-hook on the
  backbone clears it at every call; a hook on the input embedding sets it from the input ids. A forward fed
  `inputs_embeds` therefore runs with no mask rows, which is the base model.
* `GatedLoRA`: the `lora_A`/`lora_B` pair of one linear layer (a child module `gated_lora`); a forward hook
  adds `scaling * B A x` at the gate's rows (`index_add` on a flat view: the other rows are not touched).
  `space.kernels.lean_layers` adds the same deltas after its fused products.
* `MaskEmbeddings`: the trainable input rows of the mask ids (child `gated_masks` of the embedding); the
  shared embedding table, and so a tied lm_head, keep the rows `add_mask_tokens` gave them.

`add_gated_lora(model, spec, ...)` installs it (all base parameters frozen), `gated_state_dict` and
`load_gated_weights` carry the trainable tensors, and `GATED_WEIGHTS` in an adapter directory with
`"adapter": "gated_lora"` in its `space.json` is what `space.load_model` loads with no extra flag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from space.errors import SpaceError
from space.weights import derived

GATED_KIND = "gated_lora"  # the --finetuning_type, and space.json's "adapter" value
GATED_WEIGHTS = "gated_adapter.safetensors"
LORA_CHILD, MASKS_CHILD = "gated_lora", "gated_masks"


@dataclass(frozen=True)
class GatedConfig:
    """What a gated adapter is, as `space.json` records it under `gated`."""

    rank: int = 32
    alpha: float = 64.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    dropout: float = 0.0

    def to_json(self) -> dict:
        return dict(asdict(self), targets=list(self.targets))

    @classmethod
    def from_json(cls, fields: dict, source: str = "space.json") -> "GatedConfig":
        rank, targets = fields.get("rank"), fields.get("targets")
        valid = (isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1 and isinstance(targets, list)
                 and targets and all(isinstance(name, str) and name for name in targets)
                 and all(isinstance(fields.get(key, 0.0), (int, float)) for key in ("alpha", "dropout")))
        if not valid or "alpha" not in fields:
            raise SpaceError(f"{source}: 'gated' must hold rank (a positive integer), alpha (a number) and targets "
                             "(a list of module names); re-export the adapter")
        return cls(rank=rank, alpha=float(fields["alpha"]), targets=tuple(targets),
                   dropout=float(fields.get("dropout", 0.0)))


class RowGate:
    """Flat row indices (over batch x sequence) of the mask inputs of the forward in progress, or None."""

    def __init__(self, mask_id: int, num_ids: int):
        self.mask_id, self.num_ids = mask_id, num_ids
        self.rows: torch.Tensor | None = None
        self.is_mask: torch.Tensor | None = None  # [B, L] bool, for the embedding

    def set_from(self, input_ids: torch.Tensor) -> None:
        is_mask = (input_ids >= self.mask_id) & (input_ids < self.mask_id + self.num_ids)
        rows = is_mask.reshape(-1).nonzero().squeeze(1)
        self.is_mask, self.rows = (is_mask, rows) if rows.numel() else (None, None)

    def clear(self) -> None:
        self.rows = self.is_mask = None

    def clear_before(self, module: nn.Module, args: tuple) -> None:
        """The backbone's pre-hook: no mask rows until the embedding sees this call's ids (a bound method, so a
        deep copy of the model gets its own gate's)."""
        self.clear()


class GatedLoRA(nn.Module):
    """The low-rank delta of one linear layer, `scaling * B A x`, computed on the gate's rows only."""

    def __init__(self, in_features: int, out_features: int, config: GatedConfig, gate: RowGate):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(config.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.rank))  # zero: the delta starts at nothing
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's and the LoRA paper's initialisation
        self.scaling = config.alpha / config.rank
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.__dict__["gate"] = gate  # shared by every layer; not a submodule

    def delta(self, rows_in: torch.Tensor) -> torch.Tensor:
        """`[n, in]` inputs of the gated rows -> `[n, out]` deltas (in the adapter's dtype), with autograd."""
        rows_in = self.dropout(rows_in.to(self.lora_A.dtype))
        return F.linear(F.linear(rows_in, self.lora_A), self.lora_B) * self.scaling

    def needs_autograd(self) -> bool:
        """Training (dropout active) or gradients to compute: the deltas must come from the live parameters."""
        return self.training or (torch.is_grad_enabled() and (self.lora_A.requires_grad or self.lora_B.requires_grad))

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (the base product of `x`) with the delta added at the gate's rows; the other rows untouched."""
        rows = self.gate.rows
        if rows is None:
            return out
        rows_in = x.reshape(-1, x.shape[-1]).index_select(0, rows)
        return add_at_rows(out, rows, group_deltas((self,), (out.shape[-1],), rows_in, self.__dict__))


def group_deltas(adapters: tuple[GatedLoRA | None, ...], out_features: tuple[int, ...], rows_in: torch.Tensor,
                 cache: dict) -> torch.Tensor:
    """The deltas of linear layers that share one input (q/k/v, gate/up), side by side: `[n, sum(out_features)]`,
    zero where a layer has no adapter.

    At inference this is two products whatever the group's size: the adapters' `A` stacked `[sum r, in]`, then
    their scaled `B` as one block-diagonal `[sum out, sum r]`. A decode step is bound by the count of small ops
    on CPU, not by their arithmetic (docs/benchmarks.md, issue 20), so the zero blocks cost less than the
    separate products they replace. Both factors are kept transposed and contiguous for a plain `torch.mm`: at
    rank 32 and a dozen mask rows that ran 1.7-6x faster on CPU than oneDNN's prepacked product, whose fixed
    cost per call (about 17 us) is more than these products' arithmetic (docs/benchmarks.md, issue 20). The two
    copies live in `cache` (the owner's `__dict__`), taken on first use and retaken when an adapter tensor is
    replaced or changed in place. Training and gradients take each adapter's own `delta`."""
    present = [adapter for adapter in adapters if adapter is not None]
    if any(adapter.needs_autograd() for adapter in present):
        return torch.cat([adapter.delta(rows_in) if adapter is not None
                          else rows_in.new_zeros(rows_in.shape[0], width, dtype=present[0].lora_A.dtype)
                          for adapter, width in zip(adapters, out_features)], dim=-1)
    rows_in = rows_in.to(present[0].lora_A.dtype)
    a_t, b_t = _frozen_factors(adapters, out_features, cache)
    return torch.mm(torch.mm(rows_in, a_t), b_t)


def _frozen_factors(adapters, out_features, cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """`(stacked A, block-diagonal scaled B)` of a group for inference, both transposed (`[in, sum r]`,
    `[sum r, sum out]`), kept in `cache` until an adapter tensor changes (`space.weights.derived`)."""
    present = [adapter for adapter in adapters if adapter is not None]

    def factors() -> tuple[torch.Tensor, torch.Tensor]:
        stacked_a = torch.cat([adapter.lora_A.detach() for adapter in present])  # [sum r, in]
        block_b = stacked_a.new_zeros(sum(out_features), stacked_a.shape[0])
        row = col = 0
        for adapter, width in zip(adapters, out_features):
            if adapter is not None:
                rank = adapter.lora_B.shape[1]
                block_b[row : row + width, col : col + rank] = adapter.lora_B.detach() * adapter.scaling
                col += rank
            row += width
        return stacked_a.t().contiguous(), block_b.t().contiguous()

    tensors = [p for adapter in present for p in (adapter.lora_A, adapter.lora_B)]
    return derived(cache, "_gated_factors", tensors, factors, tuple(out_features))


def add_at_rows(out: torch.Tensor, rows: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """`out` with `deltas` added at its flat `rows`. At inference in place: `out` is a fresh product, and a copy
    of it per layer was measured to cost more than the deltas' products (issue 20)."""
    flat = out.reshape(-1, out.shape[-1])
    deltas = deltas.to(flat.dtype)
    if torch.is_grad_enabled() and (flat.requires_grad or deltas.requires_grad):
        return flat.index_add(0, rows, deltas).view(out.shape)
    return flat.index_add_(0, rows, deltas).view(out.shape)


class MaskEmbeddings(nn.Module):
    """Trainable input embeddings of the mask ids; they replace the shared table's rows at mask inputs only."""

    def __init__(self, rows: torch.Tensor, gate: RowGate):
        super().__init__()
        self.weight = nn.Parameter(rows.detach().clone().float())
        self.__dict__["gate"] = gate

    def replace(self, embedded: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        is_mask = self.gate.is_mask
        if is_mask is None:
            return embedded
        index = (input_ids - self.gate.mask_id).clamp(0, self.weight.shape[0] - 1)
        return torch.where(is_mask[..., None], F.embedding(index, self.weight).to(embedded.dtype), embedded)


def _linear_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, LORA_CHILD).add_to(args[0], output)


def _embedding_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    masks = getattr(module, MASKS_CHILD)
    masks.gate.set_from(args[0])
    return masks.replace(output, args[0])


def is_gated_hook(hook) -> bool:
    """Whether a forward hook is the gated adapter's (`space.kernels.lean_layers` computes it itself)."""
    return hook is _linear_hook


def gated_lora_of(linear: nn.Module) -> GatedLoRA | None:
    adapter = getattr(linear, LORA_CHILD, None)
    return adapter if isinstance(adapter, GatedLoRA) else None


def names_module(name: str, targets) -> bool:
    """Whether a module's dotted `name` is one of `targets`: the name itself or a dotted suffix (peft's rule)."""
    return any(name == target or name.endswith("." + target) for target in targets)


def target_linears(model: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Linear]]:
    """The model's linear layers named by `targets` (`names_module`), lm_head never."""
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head" and names_module(name, targets)]
    if not found:
        raise SpaceError(f"gated LoRA: no linear module named {', '.join(targets)} in this model")
    return found


def add_gated_lora(model: nn.Module, mask_id: int, num_ids: int, config: GatedConfig) -> RowGate:
    """Install a gated adapter on `model` (a HF causal LM with its mask tokens) and freeze every base parameter.

    Returns the shared gate. The adapter starts as the identity (`lora_B` zero, mask rows as they are).
    """
    if gate_of(model) is not None:
        raise SpaceError("this model already carries a gated adapter")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    gate = RowGate(mask_id, num_ids)
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    masks = MaskEmbeddings(embedding.weight[mask_id : mask_id + num_ids], gate).to(device)
    embedding.add_module(MASKS_CHILD, masks)
    embedding.register_forward_hook(_embedding_hook)
    model.get_decoder().register_forward_pre_hook(gate.clear_before)
    for _, linear in target_linears(model, config.targets):
        linear.add_module(LORA_CHILD, GatedLoRA(linear.in_features, linear.out_features, config, gate).to(device))
        linear.register_forward_hook(_linear_hook)
    model.config.space_adapter = GATED_KIND  # the decoders and reports can tell a gated model
    return gate


def gate_of(model: nn.Module) -> RowGate | None:
    """The gate of the gated adapter `model` carries (its mask embeddings hold it), or None."""
    masks = getattr(model.get_input_embeddings(), MASKS_CHILD, None)
    return masks.gate if isinstance(masks, MaskEmbeddings) else None


def gated_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (every `gated_lora` and `gated_masks` parameter) by their names in `model`."""
    return {name: parameter.detach() for name, parameter in model.named_parameters()
            if f".{LORA_CHILD}." in name or f".{MASKS_CHILD}." in name}


def load_gated_weights(model: nn.Module, path: Path) -> None:
    """Load a `GATED_WEIGHTS` file into a model carrying a gated adapter of the same shape; names must agree."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    expected = gated_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SpaceError(f"{path} does not fit this base: {len(missing)} adapter tensors missing "
                         f"({missing[:2]}), {len(unexpected)} unexpected ({unexpected[:2]}); load it onto the base it "
                         "was trained on")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in tensors:
                if tensors[name].shape != parameter.shape:
                    raise SpaceError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, the model "
                                     f"{tuple(parameter.shape)}; load it onto the base it was trained on")
                parameter.copy_(tensors[name])

