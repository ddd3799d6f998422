"""The training wing: SAR-SFT and what is built around it.

* `recipe`: `train(args) -> Trainer`, the whole SAR-SFT run (SPACE masks or SDSAT adaptive tokens);
* `arguments`: what a run is given (`parse_train_args`, config files);
* `data`, `templates`: SFT records (alpaca / sharegpt) and chat templates;
* `samples`, `collate`: mask blocks (truncating and multi-block modes), SDSAT spans, batches with 4D masks;
* `loss`, `trainer`: the SAR loss with per-offset metrics, and `SarTrainer` (HF Trainer + `compute_loss`);
* `checkpoints`: what a run does with its output dir (resume the newest complete checkpoint, refuse, start clean);
* `distill`: self-distillation prompts and the base model's greedy answers (`make_distill_data`);
* `export`: what leaves a run: a LoRA adapter merged into its base (`merge_adapter`), or exported as the
  compact shipped model (`export_adapter`);
* `default_model`: the shipped default model's recipe, distill -> train -> export (`make_default_model`);
* `sampler_head`: a sampler head's mask rows from training samples, and `scripts/train_sampler_head.py`'s run
  (the head itself and how it learns are `space.adapters`).

`from space.training import train` imports no DeepSpeed, peft or transformers Trainer; they load with a run.
"""

from space.training.arguments import TrainArguments, parse_train_args
from space.training.recipe import train

__all__ = ["TrainArguments", "parse_train_args", "train"]
