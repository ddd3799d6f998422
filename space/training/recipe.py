"""The SAR-SFT recipe (docs/spec/SPACE.md §1): `train(args) -> Trainer`, from arguments to a saved model
that decodes with no flags.

    from space.training import train
    trainer = train(["configs/sft/llama2_7b.yaml", "--model_name_or_path", "/models/Llama-2-7b-hf"])

Owns what a run does: the argument checks (stage, fine-tuning type, attention kernel against the
sample mode and what is installed, LoRA settings, LoRA under ZeRO-3), the mask (or SDSAT adaptive) tokens,
the masking config, LoRA, the static sample set, `SarTrainer`, resuming, and what is saved beside the model
(tokenizer, `space.json` for an adapter, the loss plot). What a run is given lives in
`space.training.arguments`; what it may do with its output dir (resume, refuse, start clean) in
`space.training.checkpoints`.

Every check that can fail runs before the model is loaded (flags, output dir and checkpoints, the dataset
files), except those that need the model itself (mask ids, `--lora_target`), which run right after it loads
and before the samples are built. Nothing in the output dir changes until training starts.

`--finetuning_type gated_lora` trains a gated adapter (`space.adapters.gated`): LoRA deltas and mask embeddings that
act only at mask rows, so the trained model's real tokens are the base model's own. Its batches put the real
tokens first and the trainer runs them without gradients (`SarTrainer.gated_loss`); the run saves the adapter
alone with `space.json` naming it, which `space.load_model` reads.

`--sdsat true` trains SDSAT's semantic adaptive tokens instead (docs/spec/SDSAT.md §3.2, reconstructed): spans of
`1..--sat_num` copies of one adaptive token after random real tokens, one per `--sat_every` real tokens;
real tokens keep the plain AR loss and never see a span. SPACE's `--mask_*` flags are then ignored
except `--mask_loss_weight` (the weight of the SAT predictions).

DeepSpeed and peft are imported only by the runs that use them.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

import space
from space.adapters.gated import GATED_KIND, GatedConfig, add_gated_lora, names_module
from space.cli import require_counts
from space.errors import SpaceError
from space.io import OutputLock
from space.models import peft_without_alias_warning, space_json_fields, write_space_json
from space.tokens import SatSpec, add_sat_tokens, read_mask_spec, read_sat_spec, record_mask_spec, record_sat_spec
from space.training.arguments import (
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    TrainArguments,
    parse_train_args,
    train_args_from,
)
from space.training.checkpoints import last_complete_checkpoint, plan_output_dir
from space.training.collate import SarCollator
from space.training.data import load_conversations
from space.training.samples import MaskingConfig, build_sample
from space.training.templates import get_template

if TYPE_CHECKING:
    from transformers import Trainer

TRAIN_LOCK = "train.lock"  # in the output dir while a run writes there (`space.io.OutputLock`)
ADAPTER_TYPES = ("lora", GATED_KIND)  # the fine-tuning types that train a LoRA adapter (--lora_* flags)
MASK_4D_ATTENTION = ("sdpa", "eager")  # the attention implementations that take a 4D additive float mask


def train(args: TrainArguments | Sequence[str] | Mapping | str | os.PathLike, callbacks: list | None = None) -> Trainer:
    """Run SAR-SFT and save the result in `output_dir`; returns the trainer (its model, state and dataset).

    `args`: parsed `TrainArguments`, `train_sft.py` flags (a config file may come first), a dict of
    flag names to values, or the path of a `.yaml`/`.json` config file.
    """
    from transformers import set_seed

    from space.training.trainer import SarTrainer  # transformers' Trainer imports peft and accelerate

    model_args, data_args, finetune_args, training_args = as_train_args(args)
    # every check that can fail before the model loads: a refused run costs seconds and changes nothing
    check_arguments(data_args, finetune_args, model_args, training_args)
    training_args.remove_unused_columns = False  # mask_offsets / position and segment ids reach compute_loss
    plan = plan_output_dir(training_args.output_dir, training_args.resume_from_checkpoint,
                           finetune_args.overwrite_output_dir)
    # one run at a time in an output dir (the main process holds the lock; the other ranks are the same run)
    lock = OutputLock(Path(training_args.output_dir) / TRAIN_LOCK, f"--output_dir {training_args.output_dir}")
    with lock if int(os.environ.get("RANK", "0")) == 0 else contextlib.nullcontext():
        conversations = read_conversations(data_args)
        set_seed(training_args.seed)
        start_zero3_comm(training_args, finetune_args)

        # no path: the embedded base itself ("smollm2"), never the shipped SPACE model built on it
        model, tokenizer = space.load_model(model_args.model_name_or_path or "smollm2",
                                            attn_implementation=model_args.attn_implementation, fast_cpu_linear=False)
        if finetune_args.finetuning_type in ADAPTER_TYPES:
            # needs the model's module names; before the samples are built
            lora_targets(model, finetune_args.lora_target)
        tokenizer.padding_side = "right"
        spec = (ensure_sat_tokens(model, tokenizer, data_args) if data_args.sdsat
                else ensure_mask_tokens(model, tokenizer, data_args))
        masking = masking_config(data_args, spec)
        masking.validate()
        train_dataset = build_dataset(tokenizer, data_args, masking, training_args.seed, conversations)

        model.config.use_cache = False
        gated = finetune_args.finetuning_type == GATED_KIND
        if finetune_args.finetuning_type == "lora":
            model = wrap_lora(model, finetune_args, spec)
        elif gated:
            model, adapter_config = wrap_gated(model, finetune_args, spec)
        else:
            model = model.float()  # fp32 master weights; bf16 comes from the Trainer / DeepSpeed
        if training_args.gradient_checkpointing:
            model.enable_input_require_grads()
        model.train()

        trainer = SarTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            data_collator=SarCollator(pad_token_id=tokenizer.pad_token_id, split_prefix=gated),
            callbacks=callbacks,
            mask_num=masking.mask_num,
            mask_loss_weight=data_args.mask_loss_weight,
            gated=gated,
        )
        # --overwrite_output_dir: the earlier run's checkpoints and files go only now, once every check has passed
        with training_args.main_process_first(local=training_args.save_on_each_node, desc="clearing the output dir"):
            if training_args.should_save:
                plan.clear()
        result = trainer.train(resume_from_checkpoint=plan.resume)
        trainer.save_model(training_args.output_dir)
        trainer.save_state()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)
            if finetune_args.finetuning_type == "lora":
                if not trainer.is_deepspeed_enabled \
                        or trainer.accelerator.deepspeed_config["zero_optimization"]["stage"] < 3:
                    # peft saves the whole resized embedding by default; the mask rows are already in the
                    # adapter (trainable tokens) and the rest is rebuilt at load time, so keep it small.
                    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
                    unwrapped.save_pretrained(training_args.output_dir, save_embedding_layers=False)
                write_adapter_fields(training_args.output_dir, model_args.model_name_or_path, spec)
            elif gated:
                write_space_json(training_args.output_dir, dict(space_json_fields(model_args.model_name_or_path, spec),
                                                                adapter=GATED_KIND, gated=adapter_config.to_json()))
            if finetune_args.plot_loss:
                plot_loss(trainer.state.log_history, Path(training_args.output_dir) / "training_loss.png")
        return trainer


def as_train_args(args) -> TrainArguments:
    if isinstance(args, TrainArguments):
        return args
    if isinstance(args, (str, os.PathLike)):
        return parse_train_args([os.fspath(args)])
    if isinstance(args, Mapping):
        return train_args_from(args, source="the train() arguments")
    return parse_train_args(args)


def check_arguments(data_args: DataArguments, finetune_args: FinetuningArguments,
                    model_args: ModelArguments | None = None, training_args=None) -> None:
    if finetune_args.stage != "sft":
        raise SpaceError(f"--stage {finetune_args.stage} is not supported; SAR-SFT is --stage sft")
    if finetune_args.finetuning_type not in ("full", *ADAPTER_TYPES):
        raise SpaceError(f"--finetuning_type must be full, lora or {GATED_KIND} (got {finetune_args.finetuning_type})")
    get_template(data_args.template)
    if finetune_args.finetuning_type in ADAPTER_TYPES:
        check_lora(finetune_args)
    if finetune_args.finetuning_type == GATED_KIND:
        check_gated(data_args, training_args)
    # the sample settings alone (the placeholder id is known only once the model is loaded)
    masking_config(data_args, SatSpec(0, data_args.sat_num) if data_args.sdsat else None).validate()
    for name in ("mask_id", "sat_id"):  # the upper bound is the model's: checked once it is loaded
        if getattr(data_args, name) is not None and getattr(data_args, name) < 0:
            raise SpaceError(f"--{name} must be an id >= 0 (got {getattr(data_args, name)}); leave it out to add one")
    if not 0 <= data_args.mask_loss_weight < math.inf:
        raise SpaceError(f"--mask_loss_weight must be a finite weight >= 0 (got {data_args.mask_loss_weight:g}): a "
                         "negative one would train the masks away from their targets")
    if training_args is not None:
        check_schedule(training_args)
    if model_args is not None:
        check_attention(model_args.attn_implementation, data_args, finetune_args.finetuning_type)
        check_attention_installed(model_args.attn_implementation)


def check_schedule(training_args) -> None:
    """The optimizer's schedule, which transformers checks only once the model is loaded (or not at all: a
    negative epoch count trains nothing and saves the untouched model)."""
    require_counts(training_args, ("per_device_train_batch_size", "gradient_accumulation_steps"))
    if not 0 <= training_args.learning_rate < math.inf:
        raise SpaceError(f"--learning_rate must be a finite rate >= 0 (got {training_args.learning_rate:g})")
    if training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise SpaceError(f"--num_train_epochs must be above 0 (got {training_args.num_train_epochs:g}), or give "
                         "--max_steps")


def check_lora(finetune_args: FinetuningArguments) -> None:
    if finetune_args.lora_rank < 1:
        raise SpaceError(f"--lora_rank must be a positive integer (got {finetune_args.lora_rank}); "
                         "the recipes use 8 to 32")
    if not 0.0 <= finetune_args.lora_dropout < 1.0:
        raise SpaceError(f"--lora_dropout must be in [0, 1) (got {finetune_args.lora_dropout})")
    if not finetune_args.lora_alpha > 0 or not math.isfinite(finetune_args.lora_alpha):
        raise SpaceError(f"--lora_alpha must be a positive number (got {finetune_args.lora_alpha}): the adapter's "
                         "deltas are scaled by lora_alpha / lora_rank, so 0 trains nothing that counts")
    if not lora_target_names(finetune_args.lora_target):
        raise SpaceError("--lora_target is empty; name the linear modules to adapt (comma list), or all-linear")


def check_gated(data_args: DataArguments, training_args=None) -> None:
    """A gated adapter learns mask predictions only, from a KV cache of the real tokens."""
    if data_args.sdsat:
        raise SpaceError(f"--finetuning_type {GATED_KIND} trains SPACE mask tokens; SDSAT's adaptive tokens "
                         "(--sdsat true) take --finetuning_type lora or full")
    if data_args.mask_num < 1:
        raise SpaceError(f"--finetuning_type {GATED_KIND} needs --mask_num >= 1: it trains the mask rows only")
    if training_args is not None and training_args.deepspeed and _zero_stage(training_args.deepspeed) == 3:
        raise SpaceError(f"--finetuning_type {GATED_KIND} under ZeRO-3 is not supported: the adapter reads its "
                         "weights outside module calls, which ZeRO-3 does not gather; use configs/deepspeed/zero2.json")
    if training_args is not None and training_args.gradient_checkpointing:
        raise SpaceError(f"--gradient_checkpointing is not supported with --finetuning_type {GATED_KIND}: its real "
                         "tokens run without gradients already, and only the mask blocks keep activations")


def _zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a `--deepspeed` config (a path or an already-read dict)."""
    import json

    config = deepspeed if isinstance(deepspeed, dict) else json.loads(Path(deepspeed).read_text())
    return config.get("zero_optimization", {}).get("stage")


def gated_config(finetune_args: FinetuningArguments) -> GatedConfig:
    """The adapter `--lora_rank/--lora_alpha/--lora_target/--lora_dropout` describe."""
    return GatedConfig(rank=finetune_args.lora_rank, alpha=finetune_args.lora_alpha,
                       targets=tuple(lora_target_names(finetune_args.lora_target)), dropout=finetune_args.lora_dropout)


def wrap_gated(model, finetune_args: FinetuningArguments, spec) -> tuple:
    """The model (fp32 master weights) with a gated adapter on `--lora_target`, and the adapter's config."""
    from torch import nn

    model = model.float()
    config = gated_config(finetune_args)
    targets = lora_targets(model, finetune_args.lora_target)
    if targets == "all-linear":
        config = replace(config, targets=tuple(sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                                                       if isinstance(module, nn.Linear)} - {"lm_head"})))
    add_gated_lora(model, spec.mask_id, spec.num_ids, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(f"[train_sft] gated adapter: {trainable:,} trainable of {total:,} parameters "
          f"({100 * trainable / total:.2f}%), active on mask rows only", file=sys.stderr)
    return model, config


def lora_target_names(lora_target: str) -> list[str]:
    return [name.strip() for name in lora_target.split(",") if name.strip()]


def lora_targets(model, lora_target: str) -> list[str] | str:
    """`--lora_target` checked against the model's linear modules (peft's rule: a name or a dotted suffix).

    `all-linear` is peft's own shorthand and passes through."""
    from torch import nn

    names = lora_target_names(lora_target)
    if names == ["all-linear"]:
        return "all-linear"
    linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    unknown = [target for target in names if not any(names_module(name, [target]) for name in linear)]
    if unknown:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in linear} - {"lm_head"})
        raise SpaceError(f"--lora_target: no linear module named {', '.join(unknown)} in this model; "
                         f"its linear modules are {','.join(leaves)} (or pass --lora_target all-linear)")
    return names


def check_attention(attn_implementation: str, data_args: DataArguments, finetuning_type: str = "full") -> None:
    """Multi-block and SDSAT samples carry private blocks, and gated batches put padding between the real
    tokens and the blocks, so the trainer feeds a 4D float mask; flash and flex kernels take none and would
    fail deep in CUDA. The truncating mode of the other fine-tuning types is plain causal."""
    multi_block = data_args.mask_efficient_train and data_args.mask_num > 0
    mode = ("--sdsat" if data_args.sdsat else "--mask_efficient_train" if multi_block
            else f"--finetuning_type {GATED_KIND}" if finetuning_type == GATED_KIND else None)
    if mode and attn_implementation not in MASK_4D_ATTENTION:
        raise SpaceError(
            f"--attn_implementation {attn_implementation} cannot take the 4D attention mask of {mode} samples; "
            f"use --attn_implementation sdpa (or eager)"
            + ("" if finetuning_type == GATED_KIND else f", or the truncating mode, which keeps {attn_implementation}")
        )


def check_attention_installed(attn_implementation: str) -> None:
    """Flash attention needs its package and a GPU; transformers would fail inside `from_pretrained` with a traceback
    (or fall back to a hub kernel, which needs the `kernels` package)."""
    from transformers.utils import import_utils

    version = attn_implementation.removeprefix("flash_attention_")
    available = getattr(import_utils, f"is_flash_attn_{version}_available", None)
    if attn_implementation.startswith("flash_attention_") and available is not None \
            and not available(kernels_fallback_ok=True):
        raise SpaceError(
            f"--attn_implementation {attn_implementation} is not available here: it needs a CUDA GPU and the "
            f"{'flash-attn' if version == '2' else f'flash-attn-{version}'} package (or the kernels package); "
            "use --attn_implementation sdpa"
        )


def start_zero3_comm(training_args, finetune_args: FinetuningArguments) -> None:
    """ZeRO-3 partitions the weights while they load (transformers wraps from_pretrained in zero.Init),
    and zero.Init takes the world size from deepspeed.comm: accelerate starts it on GPUs, not under
    --use_cpu, where each rank would think it is alone. Mask rows are then written through
    `space.tokens.gathered`."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return
    _ = training_args.device  # accelerate's process group first, as the Trainer would make it
    if finetune_args.finetuning_type == "lora" and training_args.device.type != "cuda":
        # peft gathers the trainable mask rows on CUDA only (TrainableTokensLayer._collect_token_weights)
        raise SpaceError("LoRA under ZeRO-3 needs CUDA GPUs (peft's trainable tokens); on CPU use "
                         "--deepspeed configs/deepspeed/zero2.json")
    import deepspeed

    deepspeed.init_distributed()


def end_process_group() -> None:
    """Leave the ranks' process group at the end of a successful run. Left alive, gloo's worker threads can
    abort the process at interpreter exit ("terminate called without an active exception", pytorch#190489),
    turning a finished run into exit status -6. Not on failure: a rank that destroys the group while another
    is inside a collective hangs both (torchtitan#1342)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def masking_config(data_args: DataArguments, spec) -> MaskingConfig:
    """How samples get their placeholders: SDSAT spans of `spec.sat_id`, or SPACE masks of `spec.mask_id`."""
    if data_args.sdsat:
        return MaskingConfig(mask_num=spec.sat_num, mask_id=spec.sat_id, sdsat=True, sat_every=data_args.sat_every,
                             cutoff_len=data_args.cutoff_len)
    return MaskingConfig(
        mask_num=data_args.mask_num, mask_id=spec.mask_id if spec else 0, mask_prob=data_args.mask_prob,
        mask_diff=data_args.mask_diff, mask_random=data_args.mask_random, efficient=data_args.mask_efficient_train,
        mask_blocks=data_args.mask_blocks, cutoff_len=data_args.cutoff_len,
    )


def ensure_mask_tokens(model, tokenizer, data_args: DataArguments):
    """The model's mask spec, adding mask tokens first when the base has none."""
    if data_args.mask_num == 0:
        return read_mask_spec(model.config)
    recorded = read_mask_spec(model.config)
    if recorded is not None and (data_args.mask_id is None or data_args.mask_id == recorded.mask_id):
        spec = space.MaskSpec(recorded.mask_id, data_args.mask_num, data_args.mask_diff)
        spec.validate(model.config.vocab_size)
        record_mask_spec(model.config, spec)
        return spec
    return space.add_mask_tokens(model, tokenizer, mask_num=data_args.mask_num, mask_id=data_args.mask_id,
                                 mask_diff=data_args.mask_diff)


def ensure_sat_tokens(model, tokenizer, data_args: DataArguments):
    """SDSAT: the model's adaptive token (k set to --sat_num), adding one first when the base has none."""
    recorded = read_sat_spec(model.config)
    if recorded is not None and data_args.sat_id in (None, recorded.sat_id):
        spec = SatSpec(recorded.sat_id, data_args.sat_num)
        spec.validate(model.config.vocab_size)
        record_sat_spec(model.config, spec)
        return spec
    return add_sat_tokens(model, tokenizer, sat_num=data_args.sat_num, sat_id=data_args.sat_id)


def read_conversations(data_args: DataArguments) -> list:
    """The run's records (`--dataset`, cut to `--max_samples`); read before the model loads, so a bad file fails
    early."""
    if data_args.max_samples is not None and data_args.max_samples < 1:
        raise SpaceError(f"--max_samples must be a positive number of records (got {data_args.max_samples}); "
                         "leave it out to use every record")
    conversations = load_conversations(data_args.dataset, data_args.dataset_dir)
    return conversations[: data_args.max_samples] if data_args.max_samples else conversations


def build_dataset(tokenizer, data_args: DataArguments, masking: MaskingConfig, seed: int,
                  conversations: list | None = None) -> list[dict]:
    """Every conversation encoded with the template and given its placeholders once (static masks)."""
    if conversations is None:
        conversations = read_conversations(data_args)
    template = get_template(data_args.template)
    rng = random.Random(seed)  # static masks: drawn once, in dataset order
    samples = []
    for conversation in tqdm(conversations, desc="building SAR-SFT samples", disable=None):
        pairs = template.encode(tokenizer, conversation.turns, conversation.system, conversation.unfinished)
        samples.append(build_sample(pairs, masking, rng))
    with_masks = sum(any(sample["mask_offsets"]) for sample in samples)
    predictions = sum(sum(1 for j in sample["mask_offsets"] if 0 < j <= masking.mask_num) for sample in samples)
    kind = "adaptive-token spans" if masking.sdsat else "mask blocks"
    print(f"[train_sft] {len(samples)} samples, {with_masks} with {kind}, {predictions} placeholder predictions",
          file=sys.stderr)
    return samples


def wrap_lora(model, finetune_args: FinetuningArguments, spec):
    from peft import LoraConfig, get_peft_model

    if spec is None:
        raise SpaceError("LoRA SAR-SFT needs mask tokens; set --mask_num > 0 (they are added when the base lacks them)")
    # The placeholder rows (SPACE masks or the SDSAT token) of the input embedding train; the rest stays frozen.
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=finetune_args.lora_rank,
        lora_alpha=finetune_args.lora_alpha,
        lora_dropout=finetune_args.lora_dropout,
        target_modules=lora_targets(model, finetune_args.lora_target),
        trainable_token_indices=spec.ids,
    )
    with peft_without_alias_warning():
        model = get_peft_model(model.float(), config)
    model.print_trainable_parameters()
    return model


def write_adapter_fields(output_dir: str, base: str | None, spec) -> None:
    """Beside the adapter: the base it belongs to and the SPACE (or SDSAT) fields (an adapter has no model config)."""
    write_space_json(output_dir, space_json_fields(base, spec))


def resume_hint(argv: Sequence[str], program: str = "scripts/train_sft.py") -> str:
    """After Ctrl-C: the command that continues the run, its flags with `--resume_from_checkpoint last`.

    A bare rerun would be refused (the dir holds checkpoints) or, with `--overwrite_output_dir`, start over."""
    argv = list(argv)
    output_dir = parse_train_args(argv).training.output_dir
    last, _ = last_complete_checkpoint(output_dir)
    if last is None:
        return f"no checkpoint was saved in {output_dir} yet: rerun the same command to start again"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher: its command line is not ours to rebuild
        return f"{last} is kept: resume with your launch command plus --resume_from_checkpoint last"
    kept, skip = [], False
    for flag in argv:
        if skip:
            skip = False
        elif flag == "--resume_from_checkpoint":
            skip = True  # an explicit checkpoint gives way to the newest one
        elif not flag.startswith(("--resume_from_checkpoint=", "--local_rank=")):
            kept.append(flag)
    return f"{last} is kept: resume with {shlex.join(['python', program, *kept, '--resume_from_checkpoint', 'last'])}"


def plot_loss(history: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[train_sft] matplotlib is not installed; skipping --plot_loss", file=sys.stderr)
        return
    points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
    if not points:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(*zip(*points))
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
