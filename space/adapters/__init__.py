"""Model add-ons that make SPACE's drafts better without changing the model's own tokens, both halves of each.

* `gated`: gated LoRA, adapter deltas and trainable embeddings that act only on mask rows, so every real token
  is the base model's bit for bit (installed, saved and loaded here; trained by `space.training` with
  `--finetuning_type gated_lora`);
* `sampler_head`: a small MLP that conditions each drafted slot on the token before it (inference and its
  file), and `sampler_head_training`: how it learns and how it is measured, on a frozen model's mask rows
  (`space.training.sampler_head` collects them from training samples and runs `scripts/train_sampler_head.py`).

`addons(model)` is how anything finds what a model carries: the gate of a gated adapter (read off its mask
embeddings, a module of the model) and an attached sampler head (kept beside the model, never in its modules).
"""

from __future__ import annotations

from dataclasses import dataclass

from space.adapters.gated import RowGate, gate_of
from space.adapters.sampler_head import SamplerHead, attached


@dataclass(frozen=True)
class AddOns:
    """The add-ons a model carries."""

    gate: RowGate | None = None  # a gated adapter's
    sampler_head: SamplerHead | None = None

    @property
    def input_only(self) -> slice | None:
        """The ids a gated model reads but must never emit: its mask tokens (None without a gated adapter).

        The base model it reproduces has no such tokens; their logit columns come from the rows `add_mask_tokens`
        gave them. The decoders leave these columns out (`space.decoding.common.Model.logits`), so greedy and
        sampled tokens follow the base's own distribution over its vocabulary."""
        gate = self.gate
        return None if gate is None else slice(gate.mask_id, gate.mask_id + gate.num_ids)


def addons(model) -> AddOns:
    """What `model` (a plain HF causal LM, not a peft wrapper) carries."""
    return AddOns(gate_of(model), attached(model))
