"""Layer skipping for self-speculative decoding (docs/spec/SELF_SPECULATIVE.md §3, §9): skip-set file, draft forward.

* `SkipLayers`: which attention and MLP sub-blocks the draft bypasses (0-based layer indices).
* `load_skip_file` / `save_skip_file` / `select_entry`: `skip_layers.json` in the original format,
  `{model name: {"attention": [...], "mlp": [...]}}`; we add an optional `"num_layers"` so an entry
  cannot be used on a model of another depth (the original reader ignores extra keys).
* `skipping_forward`: the backbone run layer by layer over the HF submodules (`input_layernorm`,
  `self_attn`, `post_attention_layernorm`, `mlp`), bypassing the chosen sub-blocks. No patched
  modeling file and no state on the model, so the same weights serve draft and verification.

HF internals stay in a few modules, one concern each: `space.cache` (the Cache API), this module (the
decoder-layer loop), `space.window` (sliding-window config fields), `space.decoding.common.Model` (the
backbone call with a 4D mask), `space.decoding.hf` (a forward hook around `generate`),
`space.training.trainer` (Trainer hooks) and `space.models` (GGUF and peft loading).
It does not decode; `space.decoding.self_spec` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from space.cache import cache_kwargs
from space.errors import SpaceError
from space.io import write_atomic
from space.models import unwrap
from space.window import layer_mask

ENTRY_KEYS = {"attention", "mlp", "num_layers"}
LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


@dataclass(frozen=True)
class SkipLayers:
    """Sub-blocks bypassed in draft mode; `num_layers` (optional) is the depth the set was made for."""

    attention: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()
    num_layers: int | None = None

    @classmethod
    def from_dict(cls, entry: dict, name: str = "skip_layers") -> "SkipLayers":
        if not isinstance(entry, dict):
            raise SpaceError(f"{name} must be an object {{'attention': [...], 'mlp': [...]}}, got "
                             f"{type(entry).__name__}")
        unknown = sorted(set(entry) - ENTRY_KEYS)
        if unknown:
            raise SpaceError(f"{name} has unknown key(s) {unknown}; allowed: {sorted(ENTRY_KEYS)}")
        lists = {}
        for part in ("attention", "mlp"):
            values = entry.get(part, [])
            if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise SpaceError(f"{name}[{part!r}] must be a list of integer layer indices")
            lists[part] = tuple(sorted(set(values)))
        num_layers = entry.get("num_layers")
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise SpaceError(f"{name}['num_layers'] must be a positive integer")
        return cls(lists["attention"], lists["mlp"], num_layers)

    @classmethod
    def from_bits(cls, attention_bits, mlp_bits) -> "SkipLayers":
        """From two boolean sequences of length L (the search's encoding)."""
        return cls(tuple(i for i, b in enumerate(attention_bits) if b), tuple(i for i, b in enumerate(mlp_bits) if b),
                   len(attention_bits))

    def to_dict(self) -> dict:
        entry = {"attention": list(self.attention), "mlp": list(self.mlp)}
        if self.num_layers is not None:
            entry["num_layers"] = self.num_layers
        return entry

    def validate(self, num_layers: int, name: str = "skip_layers") -> "SkipLayers":
        """Checked against a model of depth `num_layers`; returns a copy that records it."""
        if self.num_layers is not None and self.num_layers != num_layers:
            raise SpaceError(f"{name} is for a {self.num_layers}-layer model but this model has {num_layers} layers; "
                             "use the entry for this model or search one with scripts/search_skip_layers.py")
        for part, values in (("attention", self.attention), ("mlp", self.mlp)):
            bad = [i for i in values if not 0 <= i < num_layers]
            if bad:
                raise SpaceError(f"{name}[{part!r}] has layer indices {bad} outside [0, {num_layers}) for this "
                                 f"{num_layers}-layer model")
        return SkipLayers(self.attention, self.mlp, num_layers)

    def masks(self, num_layers: int) -> tuple[list[bool], list[bool]]:
        """Two per-layer flags, computed once per call instead of a set lookup per layer per token."""
        attention, mlp = set(self.attention), set(self.mlp)
        return [i in attention for i in range(num_layers)], [i in mlp for i in range(num_layers)]

    def fraction(self, num_layers: int) -> float:
        return (len(self.attention) + len(self.mlp)) / (2 * num_layers)


def resolve_skip_layers(value, model, key: str | None = None) -> SkipLayers:
    """The `skip_layers` decode option validated against `model`: a `SkipLayers`, a dict, or the path of a
    skip_layers.json, whose entry `key` (default: the one for the model's name, `select_entry`) is taken."""
    if value is None:
        raise SpaceError("self_spec needs skip_layers: a {'attention': [...], 'mlp': [...]} dict, a SkipLayers, or a "
                         "skip_layers.json file (with skip_layers_key to pick its entry); search one with "
                         "scripts/search_skip_layers.py")
    if isinstance(value, (str, Path)):
        return select_entry(load_skip_file(value), model, key, source=f"skip_layers {value}")[1]
    skip = value if isinstance(value, SkipLayers) else SkipLayers.from_dict(value)
    return skip.validate(model.config.num_hidden_layers)


# --- the file -------------------------------------------------------------------------------------


def load_skip_file(path: str | Path) -> dict[str, SkipLayers]:
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"skip-layers file {str(path)!r} not found; pass an existing --skip_layers file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SpaceError(f"skip-layers file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise SpaceError(f"skip-layers file {str(path)!r} must map model names to {{'attention': [...], 'mlp': [...]}}")
    return {key: SkipLayers.from_dict(entry, f"{path.name}[{key!r}]") for key, entry in data.items()}


def save_skip_file(path: str | Path, entries: dict[str, SkipLayers]) -> None:
    """Write (atomically) in the original layout: one line per list, keys in the given order."""
    lines = []
    for key, skip in entries.items():
        fields = ", ".join(f"{json.dumps(name)}: {json.dumps(value)}" for name, value in skip.to_dict().items())
        lines.append(f"    {json.dumps(key)}: {{{fields}}}")
    write_atomic(path, "{\n" + ",\n".join(lines) + "\n}\n")


def model_key(model) -> str:
    """The default entry name for a model: the last part of its name or path, lower case."""
    name = str(getattr(unwrap(model).config, "_name_or_path", "") or "").rstrip("/")
    return name.rsplit("/", 1)[-1].lower() or "model"


def select_entry(entries: dict[str, SkipLayers], model, key: str | None = None,
                 source: str = "skip-layers file") -> tuple[str, SkipLayers]:
    """The entry named `key`, else the one matching the model's name, else the file's only entry."""
    if key is not None:
        if key not in entries:
            raise SpaceError(f"{source} has no entry {key!r}; available: {sorted(entries)}")
        chosen = key
    else:
        name = str(getattr(unwrap(model).config, "_name_or_path", "") or "")
        base = model_key(model)
        candidates = [name, base, base.removesuffix("-hf")]
        chosen = next((c for c in candidates if c in entries), None)
        if chosen is None and len(entries) == 1:
            chosen = next(iter(entries))
        if chosen is None:
            raise SpaceError(f"{source} has no entry for model {base!r}; available: {sorted(entries)}; pick one with "
                             "--skip_layers_key or search one with scripts/search_skip_layers.py")
    return chosen, entries[chosen].validate(unwrap(model).config.num_hidden_layers, f"{source}[{chosen!r}]")


# --- the draft forward ----------------------------------------------------------------------------


def check_skippable(model) -> None:
    """One clear error for a model whose backbone is not the pre-norm LLaMA layer loop we run by hand."""
    backbone = unwrap(model).get_decoder()
    layers = getattr(backbone, "layers", None)
    ok = (layers is not None and all(hasattr(backbone, a) for a in ("embed_tokens", "rotary_emb", "norm"))
          and all(hasattr(layer, part) for layer in layers for part in LAYER_PARTS))
    if not ok:
        raise SpaceError(f"self_spec needs a LLaMA-style backbone (embed_tokens, rotary_emb, layers with "
                         f"{', '.join(LAYER_PARTS)}, norm); {type(backbone).__name__} is not one")


def skipping_forward(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    masks: tuple[list[bool], list[bool]],
    cache=None,
    attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The backbone with the flagged sub-blocks bypassed -> final-norm hidden states `[q, H]`.

    `masks` = `SkipLayers.masks(L)`. A bypassed attention writes no KV, so its cache layer keeps its
    length; the caller truncates the written layers back afterwards. Same arithmetic as
    `LlamaDecoderLayer.forward` for the sub-blocks that run, so skipping nothing equals the model.
    `attention_mask`: None (the query sees every cached key), or `Model.mask`'s tensor or per-layer-type dict.
    """
    skip_attention, skip_mlp = masks
    backbone = unwrap(model).get_decoder()
    hidden = backbone.embed_tokens(input_ids[None])  # [1, q, H]
    position_embeddings = backbone.rotary_emb(hidden, position_ids=position_ids[None])
    for index, layer in enumerate(backbone.layers[: len(skip_attention)]):
        if not skip_attention[index]:
            attended, _ = layer.self_attn(
                hidden_states=layer.input_layernorm(hidden),
                position_embeddings=position_embeddings,
                attention_mask=layer_mask(attention_mask, backbone.config, index),
                **cache_kwargs(layer.self_attn, cache),
            )
            hidden = hidden + attended
        if not skip_mlp[index]:
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return backbone.norm(hidden)[0]
