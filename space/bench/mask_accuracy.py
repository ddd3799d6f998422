"""Top-1 accuracy of a model's mask predictions per offset, on answers it was not trained on.

The masks of SPACE draft `x_{p+1} .. x_{p+k}` at once; how often each offset's draft is the model's own next
token bounds the tokens a step can accept. This measures it directly on held-out self-distillation answers
(`held_out.jsonl` of the default-model recipe): each answer gets mask blocks of the full width at random
response positions (the multi-block layout of training, fixed seed), one forward scores every block, and the
accuracy is reported per offset for code prompts and for general ones (`prompt_group`).

`scripts/eval_mask_accuracy.py` runs it and writes JSON and a markdown table.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import space
from space.cli import parse_flags
from space.errors import SpaceError
from space.io import markdown_table, read_records, write_atomic
from space.training.collate import SarCollator
from space.training.data import load_conversations_of
from space.training.distill_prompts import GROUPS, prompt_group
from space.training.samples import MaskingConfig, build_sample
from space.training.templates import get_template
from space.window import batch_masks


@dataclass
class MaskAccuracyArguments:
    """The flags of `scripts/eval_mask_accuracy.py`."""

    data: str = field(metadata={"help": "held-out answers (.jsonl), e.g. runs/default_model/held_out.jsonl"})
    model: str | None = field(default=None, metadata={"help": "model or adapter dir (default: the shipped model)"})
    mask_num: int | None = field(default=None, metadata={"help": "offsets to score (default: the trained width)"})
    blocks: int = field(default=16, metadata={"help": "mask blocks per answer"})
    cutoff_len: int = 1024
    template: str = "chat_template"
    seed: int = 0
    output: str = "outputs/mask_accuracy.json"


def parse_mask_accuracy_args(argv: list[str] | None = None) -> MaskAccuracyArguments:
    (args,) = parse_flags((MaskAccuracyArguments,), argv, "eval_mask_accuracy.py",
                          description="Top-1 accuracy of the mask predictions per offset on held-out answers.")
    return args


def mask_accuracy(args: MaskAccuracyArguments) -> dict:
    """Accuracy per offset and group; written to `args.output` with the settings."""
    path = Path(args.data)
    if not path.is_file():
        raise SpaceError(f"--data {path} not found; the default-model recipe writes held_out.jsonl in its work dir")
    records = read_records(path)
    # the group of an answer is read off its id (`prompt_group`): records the distillation step wrote
    unnamed = next((n for n, record in enumerate(records, 1) if not isinstance(record, dict) or "id" not in record),
                   None)
    if not records or unnamed is not None:
        where = f"record {unnamed} has no 'id'" if records else "it has no records"
        raise SpaceError(f"--data {path}: {where}; pass answers written by scripts/make_distill_data.py (the "
                         "default-model recipe's held_out.jsonl)")
    model, tokenizer = space.load_model(args.model, dtype="float32")
    spec = space.read_mask_spec(model.config)
    if spec is None:
        raise SpaceError("this model has no mask tokens: load a SPACE model")
    trained = int(getattr(model.config, "mask_num", spec.mask_num))
    k = args.mask_num or trained
    if not 1 <= k <= trained:
        raise SpaceError(f"--mask_num {k} must be between 1 and the width the masks were trained with ({trained})")
    masking = MaskingConfig(mask_num=k, mask_id=spec.mask_id, mask_diff=spec.mask_diff, efficient=True,
                            mask_blocks=args.blocks, cutoff_len=args.cutoff_len)
    masking.validate()
    correct, count = score_answers(model, tokenizer, records, masking, args.template, args.seed, str(path))
    rows = [dict(group=group, answers=sum(prompt_group(r["id"]) == group for r in records),
                 **{f"offset {j}": (round(correct[group][j - 1] / count[group][j - 1], 3) if count[group][j - 1]
                                    else None)
                    for j in range(1, k + 1)}) for group in GROUPS]
    result = dict(model=args.model or "shipped default", data=str(path), mask_num=k, blocks=args.blocks,
                  seed=args.seed, rows=rows, predictions=count)
    write_atomic(args.output, json.dumps(result, indent=2))
    return result


@torch.inference_mode()
def score_answers(model, tokenizer, records: list[dict], masking: MaskingConfig, template: str = "chat_template",
                  seed: int = 0, source: str = "the records") -> tuple[dict, dict]:
    """Right top-1 mask predictions and predictions made, per group and offset (`[k]` lists)."""
    conversations = load_conversations_of(records, source)
    k, rng, collate = masking.mask_num, random.Random(seed), SarCollator(tokenizer.pad_token_id)
    encoder = get_template(template)
    correct = {group: [0] * k for group in GROUPS}
    count = {group: [0] * k for group in GROUPS}
    for record, conversation in tqdm(list(zip(records, conversations)), desc="mask accuracy", disable=None):
        pairs = encoder.encode(tokenizer, conversation.turns, conversation.system, conversation.unfinished)
        batch = collate([build_sample(pairs, masking, rng)])
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       attention_mask=batch_masks(batch["attention_mask_4d"], batch["position_ids"], model.config,
                                                  torch.float32)).logits[0, :-1]
        targets, offsets = batch["labels"][0, 1:], batch["mask_offsets"][0, :-1]  # the logit at i scores label i+1
        right = logits.argmax(-1) == targets
        group = prompt_group(record["id"])
        for j in range(1, k + 1):
            scored = (offsets == j) & (targets >= 0)
            correct[group][j - 1] += int(right[scored].sum())
            count[group][j - 1] += int(scored.sum())
    return correct, count


def accuracy_table(result: dict) -> str:
    columns = ["group", "answers"] + [f"offset {j}" for j in range(1, result["mask_num"] + 1)]
    return markdown_table(result["rows"], columns)
