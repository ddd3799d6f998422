"""CPU fast paths for decoding-sized forwards, each checked against HF's own forward by the tests.

* `fast_linear`: `RowsLinear`, linear layers on oneDNN-prepacked weights (`use_fast_linear`);
* `lean_layers`: `LeanLlamaDecoderLayer`, a LLaMA layer with fused q/k/v and gate/up products and fewer small
  ops (`use_lean_layers`).

`space.load_model` applies both on the CPU; they change the rounding order, never the model.
"""
