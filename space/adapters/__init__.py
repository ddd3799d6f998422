"""Model add-ons that make SPACE's drafts better without changing the model's own tokens, both halves of each.

* `gated`: gated LoRA, adapter deltas and trainable embeddings that act only on mask rows, so every real token
  is the base model's bit for bit (installed, saved and loaded here; trained by `space.training` with
  `--finetuning_type gated_lora`);
* `sampler_head`: a small MLP that conditions each drafted slot on the token before it (inference and its
  file), and `sampler_head_training`: how it learns and how it is measured, on a frozen model's mask rows
  (`space.training.sampler_head` collects them from training samples and runs `scripts/train_sampler_head.py`).

A model carries its add-ons as modules (gated) or as an attached head; `space.adapters.sampler_head.attached`
and `space.adapters.gated.input_only_ids` are how the decoders find them.
"""
