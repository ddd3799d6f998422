"""SAR-SFT: fine-tune a causal LM with mask tokens so one forward predicts the next k tokens (docs/spec/SPACE.md §1).

Accepts the original script's flags (`--stage sft --model_name_or_path --do_train --dataset
--template --finetuning_type {full,lora} --cutoff_len --mask_num --mask_prob --mask_random
--mask_efficient_train --mask_id --mask_diff --mask_loss_weight --plot_loss --overwrite_cache`),
every HF `Seq2SeqTrainingArguments` flag (DeepSpeed, bf16, gradient checkpointing, resuming, ...),
and `--dataset_dir` for local data. A `.yaml`/`.json` first argument is a config file whose keys are
flag names; flags after it win.

    python scripts/train_sft.py --stage sft --do_train --model_name_or_path meta-llama/Llama-2-7b-hf \\
        --dataset alpaca_gpt4_en,lima --dataset_dir data --template default --finetuning_type full \\
        --mask_num 5 --mask_prob 0.5 --mask_id 32002 --output_dir out --bf16 true
    python scripts/train_sft.py configs/sft/llama2_7b.yaml --model_name_or_path /models/Llama-2-7b-hf --output_dir out

The output directory is ready for `space.decode` with no flags: model (or LoRA adapter plus
`space.json`), tokenizer, and `mask_id` / `mask_num` / `mask_diff` in the config. `--mask_id auto`
keeps the model's recorded mask id, or takes the first free id.

`--sdsat true` trains SDSAT's semantic adaptive tokens instead (docs/spec/SDSAT.md §3.2, reconstructed): spans of
`1..--sat_num` copies of one adaptive token (`--sat_id`, default a new token) after random real tokens,
one per `--sat_every` real tokens; real tokens keep the plain AR loss and never see a span. The output
records `sat_id` / `sat_num` for `space.decode(..., "sdsat")`; SPACE's `--mask_*` flags are ignored
except `--mask_loss_weight` (the weight of the SAT predictions).

An interrupted run keeps its `checkpoint-N` folders; Ctrl-C prints the command that continues from the newest
complete one (the same flags with `--resume_from_checkpoint last`).

The run itself is `space.training.train` (space/training/recipe.py).
"""

from __future__ import annotations

import sys

from space.cli import run
from space.training import parse_train_args, train
from space.training.recipe import end_process_group, resume_hint


def main(argv=None):
    trainer = train(parse_train_args(sys.argv[1:] if argv is None else argv))
    if trainer.is_world_process_zero():
        print(f"[train_sft] saved to {trainer.args.output_dir}", file=sys.stderr)
    end_process_group()
    return trainer


if __name__ == "__main__":
    run(main, lambda: resume_hint(sys.argv[1:], sys.argv[0]))
