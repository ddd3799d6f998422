"""SAR-SFT: fine-tune a causal LM with mask tokens so one forward predicts the next k tokens (SPACE §1).

Accepts the original script's flags (`--stage sft --model_name_or_path --do_train --dataset
--template --finetuning_type {full,lora} --cutoff_len --mask_num --mask_prob --mask_random
--mask_efficient_train --mask_id --mask_diff --mask_loss_weight --plot_loss --overwrite_cache`),
every HF `Seq2SeqTrainingArguments` flag (DeepSpeed, bf16, gradient checkpointing, resuming, ...),
and `--dataset_dir` for local data. A single `.yaml`/`.json` argument is read as a config file.

    python scripts/train_sft.py --stage sft --do_train --model_name_or_path meta-llama/Llama-2-7b-hf \\
        --dataset alpaca_gpt4_en,lima --dataset_dir data --template default --finetuning_type full \\
        --mask_num 5 --mask_prob 0.5 --mask_id 32002 --output_dir out --bf16 true

The output directory is ready for `space.decode` with no flags: model (or LoRA adapter plus
`space.json`), tokenizer, and `mask_id` / `mask_num` / `mask_diff` in the config.

`--sdsat true` trains SDSAT's semantic adaptive tokens instead (spec §3.2, reconstructed): spans of
`1..--sat_num` copies of one adaptive token (`--sat_id`, default a new token) after random real tokens,
one per `--sat_every` real tokens; real tokens keep the plain AR loss and never see a span. The output
records `sat_id` / `sat_num` for `space.decode(..., "sdsat")`; SPACE's `--mask_*` flags are ignored
except `--mask_loss_weight` (the weight of the SAT predictions).
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, set_seed  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

import space  # noqa: E402
from space.cli import run  # noqa: E402
from space.training.collate import SarCollator  # noqa: E402
from space.models import space_json_fields, write_space_json  # noqa: E402
from space.training.data import load_conversations  # noqa: E402
from space.training.samples import MaskingConfig, build_sample  # noqa: E402
from space.training.templates import get_template  # noqa: E402
from space.tokens import add_sat_tokens, read_mask_spec, read_sat_spec, record_mask_spec, record_sat_spec  # noqa: E402
from space.training.trainer import SarTrainer  # noqa: E402



@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "HF dir, hub name or .gguf (default: the embedded SmolLM2-135M base)"})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "sdpa or eager; flash_attention_2 and others only in the truncating mode (the other modes need a 4D mask)"})


@dataclass
class DataArguments:
    dataset: str = field(default="lima", metadata={"help": "comma list of registry names or .json/.jsonl files"})
    dataset_dir: str = field(default="data", metadata={"help": "folder holding local dataset files"})
    template: str = field(default="default", metadata={"help": "default, vicuna or chat_template"})
    cutoff_len: int = field(default=1024, metadata={"help": "max tokens per sample (mask blocks included)"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N records"})
    overwrite_cache: bool = field(default=False, metadata={"help": "accepted for compatibility; samples are always rebuilt"})
    mask_num: int = field(default=5, metadata={"help": "k: future tokens predicted in parallel (0 = plain SFT)"})
    mask_id: int | None = field(default=None, metadata={"help": "mask token id (default: the model's, else first free id)"})
    mask_prob: float = field(default=0.5, metadata={"help": "probability that a sample gets mask blocks"})
    mask_random: bool = field(default=False, metadata={"help": "efficient mode: block size uniform in 1..k"})
    mask_efficient_train: bool = field(default=False, metadata={"help": "multi-block mode instead of the faithful truncating mode"})
    mask_blocks: int = field(default=4, metadata={"help": "efficient mode: mask blocks per sample"})
    mask_diff: bool = field(default=False, metadata={"help": "distinct ids mask_id + j per slot"})
    mask_loss_weight: float = field(default=1.0, metadata={"help": "loss weight of the mask (or SAT) predictions"})
    sdsat: bool = field(default=False, metadata={"help": "SDSAT sample mode: adaptive-token spans instead of SPACE masks"})
    sat_num: int = field(default=5, metadata={"help": "sdsat: longest span K_train (span sizes uniform in 1..K); the decoding k"})
    sat_id: int | None = field(default=None, metadata={"help": "sdsat: adaptive token id (default: the model's, else a new token)"})
    sat_every: int = field(default=64, metadata={"help": "sdsat: one span per this many real tokens"})


@dataclass
class FinetuningArguments:
    stage: str = field(default="sft", metadata={"help": "only 'sft' is implemented"})
    finetuning_type: str = field(default="full", metadata={"help": "full or lora"})
    lora_rank: int = field(default=8)
    lora_alpha: float = field(default=16.0)
    lora_dropout: float = field(default=0.0)
    lora_target: str = field(default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    plot_loss: bool = field(default=False, metadata={"help": "save training_loss.png in output_dir"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start afresh even if output_dir holds checkpoints (else refuse, or resume)"}
    )


def parse_args(argv):
    """Flags, or a `.yaml`/`.json` config file first and flags after it (the flags win)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuningArguments, Seq2SeqTrainingArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_to_flags(Path(argv[0])) + argv[1:]
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # HfArgumentParser's "Some specified arguments are not used ...: [flags]"
        unknown = str(error).rsplit(":", 1)[-1].strip()
        raise space.SpaceError(f"unknown flag(s) for train_sft.py: {unknown}; see --help") from error


def config_to_flags(path: Path) -> list[str]:
    if not path.is_file():
        raise space.SpaceError(f"config file not found: {path}")
    if path.suffix == ".json":
        values = json.loads(path.read_text())
    else:
        import yaml

        values = yaml.safe_load(path.read_text())
    if not isinstance(values, dict):
        raise space.SpaceError(f"{path}: expected a mapping of flag names to values")
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict)) else str(value)]
    return flags


def main(argv=None, callbacks=None):
    model_args, data_args, finetune_args, training_args = parse_args(argv)
    check_arguments(data_args, finetune_args, model_args)
    training_args.remove_unused_columns = False  # mask_offsets / position and segment ids reach compute_loss
    set_seed(training_args.seed)
    start_zero3_comm(training_args, finetune_args)

    # no path: the embedded base itself ("smollm2"), never the shipped SPACE model built on it
    model, tokenizer = space.load_model(model_args.model_name_or_path or "smollm2", attn_implementation=model_args.attn_implementation,
                                        fast_cpu_linear=False)
    tokenizer.padding_side = "right"
    spec = ensure_sat_tokens(model, tokenizer, data_args) if data_args.sdsat else ensure_mask_tokens(model, tokenizer, data_args)
    masking = masking_config(data_args, spec)
    masking.validate()
    train_dataset = build_dataset(tokenizer, data_args, masking, training_args.seed)

    model.config.use_cache = False
    if finetune_args.finetuning_type == "lora":
        model = wrap_lora(model, finetune_args, spec)
    else:
        model = model.float()  # fp32 master weights; bf16 comes from the Trainer / DeepSpeed
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()
    model.train()

    trainer = SarTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=SarCollator(pad_token_id=tokenizer.pad_token_id),
        callbacks=callbacks,
        mask_num=masking.mask_num,
        mask_loss_weight=data_args.mask_loss_weight,
    )
    resume = resolve_resume(training_args, finetune_args.overwrite_output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
        if finetune_args.finetuning_type == "lora":
            if not trainer.is_deepspeed_enabled or trainer.accelerator.deepspeed_config["zero_optimization"]["stage"] < 3:
                # peft saves the whole resized embedding by default; the mask rows are already in the
                # adapter (trainable tokens) and the rest is rebuilt at load time, so keep it small.
                unwrapped = trainer.accelerator.unwrap_model(trainer.model)
                unwrapped.save_pretrained(training_args.output_dir, save_embedding_layers=False)
            write_adapter_fields(training_args.output_dir, model_args.model_name_or_path, spec)
        if finetune_args.plot_loss:
            plot_loss(trainer.state.log_history, Path(training_args.output_dir) / "training_loss.png")
    return trainer


MASK_4D_ATTENTION = ("sdpa", "eager")  # the attention implementations that take a 4D additive float mask


def check_arguments(data_args: DataArguments, finetune_args: FinetuningArguments,
                    model_args: ModelArguments | None = None) -> None:
    if finetune_args.stage != "sft":
        raise space.SpaceError(f"--stage {finetune_args.stage} is not supported; SAR-SFT is --stage sft")
    if finetune_args.finetuning_type not in ("full", "lora"):
        raise space.SpaceError(f"--finetuning_type must be full or lora (got {finetune_args.finetuning_type})")
    get_template(data_args.template)
    if model_args is not None:
        check_attention(model_args.attn_implementation, data_args)


def check_attention(attn_implementation: str, data_args: DataArguments) -> None:
    """Multi-block and SDSAT samples carry private blocks, so the trainer feeds a 4D float mask; flash
    and flex kernels take none and would fail deep in CUDA. The truncating mode is plain causal."""
    multi_block = data_args.mask_efficient_train and data_args.mask_num > 0
    mode = "--sdsat" if data_args.sdsat else "--mask_efficient_train" if multi_block else None
    if mode and attn_implementation not in MASK_4D_ATTENTION:
        raise space.SpaceError(
            f"--attn_implementation {attn_implementation} cannot take the 4D attention mask of {mode} samples; "
            f"use --attn_implementation sdpa (or eager), or the truncating mode, which keeps {attn_implementation}"
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
        raise space.SpaceError("LoRA under ZeRO-3 needs CUDA GPUs (peft's trainable tokens); on CPU use "
                               "--deepspeed configs/deepspeed/zero2.json")
    import deepspeed

    deepspeed.init_distributed()


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
        spec = space.SatSpec(recorded.sat_id, data_args.sat_num)
        spec.validate(model.config.vocab_size)
        record_sat_spec(model.config, spec)
        return spec
    return add_sat_tokens(model, tokenizer, sat_num=data_args.sat_num, sat_id=data_args.sat_id)


def build_dataset(tokenizer, data_args: DataArguments, masking: MaskingConfig, seed: int) -> list[dict]:
    conversations = load_conversations(data_args.dataset, data_args.dataset_dir)
    if data_args.max_samples:
        conversations = conversations[: data_args.max_samples]
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
        raise space.SpaceError("LoRA SAR-SFT needs mask tokens; set --mask_num > 0 (they are added when the base lacks them)")
    # The placeholder rows (SPACE masks or the SDSAT token) of the input embedding train; the rest stays frozen.
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=finetune_args.lora_rank,
        lora_alpha=finetune_args.lora_alpha,
        lora_dropout=finetune_args.lora_dropout,
        target_modules=[name.strip() for name in finetune_args.lora_target.split(",") if name.strip()],
        trainable_token_indices=spec.ids,
    )
    model = get_peft_model(model.float(), config)
    model.print_trainable_parameters()
    return model


def write_adapter_fields(output_dir: str, base: str | None, spec) -> None:
    """Beside the adapter: the base it belongs to and the SPACE (or SDSAT) fields (an adapter has no model config)."""
    write_space_json(output_dir, space_json_fields(base, spec))


def resolve_resume(training_args, overwrite: bool) -> str | bool | None:
    """`--resume_from_checkpoint last` (or true) resumes from the newest checkpoint in output_dir."""
    value = training_args.resume_from_checkpoint
    if value is None:
        has_checkpoints = Path(training_args.output_dir).is_dir() and get_last_checkpoint(training_args.output_dir)
        if has_checkpoints and not overwrite:
            raise space.SpaceError(
                f"{training_args.output_dir} already holds checkpoints: pass --resume_from_checkpoint last to "
                "continue, or --overwrite_output_dir to start afresh"
            )
        return None
    if str(value).lower() in ("last", "true"):
        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            raise space.SpaceError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {training_args.output_dir}")
        return last
    if not Path(value).is_dir():
        raise space.SpaceError(f"--resume_from_checkpoint: {value} is not a checkpoint folder")
    return value


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


if __name__ == "__main__":
    run(main)
