"""Export a LoRA SAR-SFT run as the compact shipped default model (`space/default_model/`).

    python scripts/export_default_model.py --adapter_dir runs/default_model/sft --output space/default_model

Keeps the adapter config, the SPACE fields (`space.json`, base = the embedded SmolLM2; `--mask_num`
records the default decoding k, chosen by the k sweep, as `decode_mask_num`, and `--cuda_mask_num` the
one used on a GPU as `decode_mask_num_cuda`) and the
adapter weights (LoRA matrices and the trained mask-token rows) cast to float16 safetensors. The
tokenizer is not copied: `space.load_model()` rebuilds the mask tokens from `space.json`.
The export itself is `space.training.export.export_adapter`.
"""

from __future__ import annotations

from pathlib import Path

from space.cli import run
from space.training.export import export_adapter, parse_export_args


def main(argv=None) -> Path:
    exported = export_adapter(parse_export_args(argv))
    print(exported)
    return exported.path


if __name__ == "__main__":
    run(main)
