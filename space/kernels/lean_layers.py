"""A leaner inference forward for LLaMA decoder layers: fewer products and fewer small ops per layer.

On CPU a decode step of a small LLaMA pays per op, not only per FLOP: SmolLM2-135M runs 211 linear
products and some 2,200 aten calls per one-row forward (issue 18). `use_lean_layers(model)` switches every
`LlamaDecoderLayer` to `LeanLlamaDecoderLayer`, whose forward computes the same layer with

* one product for q, k and v and one for gate and up, on the projections' weights concatenated along the
  output dimension: on CPU the packed oneDNN product `space.kernels.fast_linear.RowsLinear` uses, on a packed copy
  of the fused weight; elsewhere (another device, fp16, no oneDNN) `F.linear` on the fused weight. The
  copy is taken on first use and retaken when a source weight is replaced or changed in place;
* RMSNorm as `torch.nn.functional.rms_norm` (one op for HF's five, bit-equal to `LlamaRMSNorm`);
* rotary embedding on q and k at once, `rotate_half`'s `cat` replaced by a `roll` and its sign folded
  into `sin` (the same values);
* attention through `F.scaled_dot_product_attention` with the rules of transformers' sdpa path (the
  `is_causal` rule, GQA, the scale), or transformers' own `eager_attention_forward` for eager models.

The class swap keeps the module tree, parameters and state dict; the signature and return value are
those of transformers 5.24's `LlamaDecoderLayer.forward`, so HF's `LlamaModel.forward`, `generate` and
every decoder in `space.decoding` run it unchanged. `o_proj` and `down_proj` are still called as modules;
hooks on `self_attn`, `mlp` or the norms do not run on the lean path.

It applies to LLaMA layers without projection biases, with SiLU MLPs and eager or sdpa attention
(other models are left untouched and counted 0), and only at inference: in training mode, with
gradients to compute, with attention weights requested, or once a fused projection is wrapped (a LoRA
layer, a hook), a layer takes transformers' own forward. A gated adapter (`space.adapters.gated`) is the exception:
its deltas are added to the fused products' mask rows here, as the projections' hooks would. The fused
copies hold the q/k/v and gate/up weights once more in memory, as `use_fast_linear` does for every linear layer.
`space.load_model` applies it where it applies `use_fast_linear` (on CPU by default).
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, eager_attention_forward

from space.adapters.gated import add_at_rows, gated_lora_of, group_deltas, is_gated_hook
from space.cache import passed_cache
from space.kernels.fast_linear import (
    PACKED_DTYPES,
    RowsLinear,
    packed_product,
    packed_products_available,
    packed_weight,
)
from space.weights import derived

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
PLAIN_LINEARS = (nn.Linear, RowsLinear)


class LeanLlamaDecoderLayer(LlamaDecoderLayer):
    """`LlamaDecoderLayer` with a leaner inference forward; training and grad take the original one."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if not self._lean_applies(hidden_states, kwargs):
            if cache is not None:  # else a `past_key_values=` in kwargs is the cache, renamed by HF's wrapper
                kwargs["cache"] = cache
            return super().forward(hidden_states, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        cache = cache if cache is not None else passed_cache(kwargs)  # `past_key_values=` is still accepted
        attn = self.self_attn
        batch, rows, _ = hidden_states.shape
        head_dim = attn.head_dim
        heads, kv_heads = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim

        qkv = self._fused_product("qkv", (attn.q_proj, attn.k_proj, attn.v_proj),
                                  _rms_norm(self.input_layernorm, hidden_states))
        qkv = qkv.view(batch, rows, heads + 2 * kv_heads, head_dim)  # [b, q, H + 2 KV, d]
        qk = _rotary(qkv[:, :, : heads + kv_heads], *position_embeddings)  # [b, q, H + KV, d]
        query = qk[:, :, :heads].transpose(1, 2)  # [b, H, q, d]
        key = qk[:, :, heads:].transpose(1, 2)  # [b, KV, q, d]
        value = qkv[:, :, heads + kv_heads :].transpose(1, 2)  # [b, KV, q, d]
        if cache is not None:
            key, value = cache.update(key, value, attn.layer_idx, kwargs=kwargs)
        if attn.config._attn_implementation == "sdpa":
            attended = _sdpa(attn, query, key, value, attention_mask, kwargs.get("is_causal"))  # [b, q, H, d]
        else:
            attended, _ = eager_attention_forward(attn, query, key, value, attention_mask, scaling=attn.scaling)
        hidden_states = hidden_states + attn.o_proj(attended.reshape(batch, rows, heads * head_dim))

        gate_up = self._fused_product("gate_up", (self.mlp.gate_proj, self.mlp.up_proj),
                                      _rms_norm(self.post_attention_layernorm, hidden_states))
        gate, up = gate_up.chunk(2, dim=-1)
        return hidden_states + self.mlp.down_proj(F.silu(gate) * up)

    def _lean_applies(self, hidden_states: torch.Tensor, kwargs: dict) -> bool:
        """Inference on projections that are still plain linear layers (not LoRA-wrapped, hooked or biased)."""
        attn = self.self_attn
        if self.training or attn.config._attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            return False
        # transformers captures attention weights with a hook on `self_attn`, which the lean forward never calls.
        if kwargs.get("output_attentions") or getattr(attn.config, "output_attentions", False):
            return False
        if torch.is_grad_enabled() and (hidden_states.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return all(_plain(linear) for linear in (attn.q_proj, attn.k_proj, attn.v_proj, self.mlp.gate_proj,
                                                 self.mlp.up_proj))

    def _fused_product(self, name: str, linears: tuple[nn.Linear, ...], x: torch.Tensor) -> torch.Tensor:
        """`x` times the weights of `linears` stacked along the output dimension, as one product."""
        weights = [linear.weight for linear in linears]
        packed = (x.device.type == "cpu" and x.dtype in PACKED_DTYPES and x.dtype == weights[0].dtype
                  and packed_products_available())

        def fuse() -> torch.Tensor:
            fused = torch.cat([w.detach() for w in weights])  # [sum of outs, in]
            return packed_weight(fused) if packed else fused

        weight = derived(self.__dict__.setdefault("_fused_weights", {}), name, weights, fuse, packed)
        if not packed:
            out = F.linear(x, weight)
        else:
            out = packed_product(x.reshape(-1, x.shape[-1]), weight)
            out = out.view(*x.shape[:-1], -1)
        return _add_gated_deltas(linears, x, out, self.__dict__.setdefault("_gated_groups", {}).setdefault(name, {}))


def _add_gated_deltas(linears: tuple[nn.Linear, ...], x: torch.Tensor, out: torch.Tensor, cache: dict) -> torch.Tensor:
    """The fused product `out` plus the gated adapters' deltas on the mask rows (`space.adapters.gated`), which the
    projections' own hooks would have added, computed as one group (`group_deltas`, its copies in `cache`);
    real rows are not touched."""
    adapters = tuple(gated_lora_of(linear) for linear in linears)
    gate = next((adapter.gate for adapter in adapters if adapter is not None), None)
    if gate is None or gate.rows is None:
        return out
    rows_in = x.reshape(-1, x.shape[-1]).index_select(0, gate.rows)
    deltas = group_deltas(adapters, tuple(linear.out_features for linear in linears), rows_in, cache)
    return add_at_rows(out, gate.rows, deltas)


def _plain(linear: nn.Module) -> bool:
    """A bias-free linear layer whose forward is its class's own (no hooks, no accelerate/peft wrapping); a
    gated adapter's hook is allowed: the fused product adds its delta itself (`_add_gated_deltas`)."""
    return (type(linear) in PLAIN_LINEARS and linear.bias is None and "forward" not in linear.__dict__
            and all(is_gated_hook(hook) for hook in linear._forward_hooks.values()) and not linear._forward_pre_hooks)


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`LlamaRMSNorm(x)`: HF normalizes in fp32, casts back, then multiplies the weight in the input dtype.

    `F.rms_norm` normalizes half-precision input in fp32 too and rounds once: both steps in one op, bit-equal
    to HF's five (checked on random inputs in fp32, bf16 and fp16). In fp32 it takes the weight as well.
    """
    shape = (x.shape[-1],)
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, shape, norm.weight, norm.variance_epsilon)
    return norm.weight * F.rms_norm(x, shape, None, norm.variance_epsilon)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's `x * cos + rotate_half(x) * sin` on `x` `[b, q, heads, d]` with `cos`, `sin` `[b, q, d]`.

    `rotate_half(x)` is `[-x2, x1]`; `roll` gives `[x2, x1]` and the sign moves into `sin`: the same values
    (a negation is exact) in five ops for q and k together, where HF takes seven for each.
    """
    sin = sin * _rotate_sign(x.shape[-1], sin.dtype, sin.device)
    rotated = x.roll(x.shape[-1] // 2, dims=-1).mul_(sin.unsqueeze(2))
    return (x * cos.unsqueeze(2)).add_(rotated)


@functools.lru_cache(maxsize=None)
def _rotate_sign(head_dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor, usable in and out of inference mode
        half = head_dim // 2
        return torch.cat([torch.full((half,), -1.0), torch.ones(head_dim - half)]).to(device=device, dtype=dtype)


def _sdpa(attn: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          mask: torch.Tensor | None, is_causal: bool | None) -> torch.Tensor:
    """`transformers.integrations.sdpa_attention.sdpa_attention_forward` for inference -> `[b, q, H, d]`."""
    batch, heads, rows, head_dim = query.shape
    groups = attn.num_key_value_groups
    if mask is not None and mask.shape[-1] > key.shape[2]:
        mask = mask[..., : key.shape[2]]  # a mask built for a longer (static) cache
    # HF's rule: sdpa's own causal mask only for a prefill without a mask (one row sees every key).
    is_causal = rows > 1 and mask is None and (attn.is_causal if is_causal is None else is_causal)
    if is_causal and key.shape[2] > rows:
        key, value = key[:, :, :rows], value[:, :, :rows]
    options = {}
    if groups > 1 and rows == 1:
        # One row: the heads of a KV group become rows of that group (HF's `pack_gqa`), no repeated KV.
        query = query.reshape(batch, heads // groups, groups, head_dim)
        if mask is not None and mask.shape[1] > 1:
            mask = mask.reshape(batch, heads // groups, groups, mask.shape[-1])
    elif groups > 1 and (mask is None or query.device.type == "cpu"):
        # HF repeats KV when a mask is given (CUDA's fast kernels refuse masked GQA); on CPU `enable_gqa`
        # gives the same result and was measured faster than the copy.
        options["enable_gqa"] = True
    elif groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scaling,
                                         is_causal=is_causal, **options)
    return out.reshape(batch, heads, rows, head_dim).transpose(1, 2)


def lean_layer_applies(layer: nn.Module) -> bool:
    """Whether `layer` is a LLaMA decoder layer the lean forward computes exactly."""
    if type(layer) is not LlamaDecoderLayer:
        return False
    config = layer.self_attn.config
    return (getattr(config, "model_type", None) == "llama" and config.hidden_act == "silu"
            and not getattr(config, "attention_bias", False) and not getattr(config, "mlp_bias", False)
            and config._attn_implementation in ATTENTION_IMPLEMENTATIONS
            and all(_plain(linear) for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                                  layer.self_attn.v_proj, layer.mlp.gate_proj, layer.mlp.up_proj)))


@functools.lru_cache(maxsize=None)
def _same_signature() -> bool:
    """Whether the installed `LlamaDecoderLayer.forward` takes what the lean forward was written for."""
    installed = list(inspect.signature(LlamaDecoderLayer.forward).parameters)
    return installed == list(inspect.signature(LeanLlamaDecoderLayer.forward).parameters)


def use_lean_layers(model: nn.Module) -> int:
    """Switch every LLaMA decoder layer of `model` to `LeanLlamaDecoderLayer` in place; returns how many.

    Other architectures (Mistral, Qwen2 ...) and layers the lean forward does not cover are left
    untouched, as is everything when the installed transformers' layer signature differs (0).
    """
    if not _same_signature():
        return 0
    switched = 0
    for module in model.modules():
        if lean_layer_applies(module):
            module.__class__ = LeanLlamaDecoderLayer
            switched += 1
    return switched
