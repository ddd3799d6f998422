"""A sampler head for a trained SPACE model: its mask rows, its training and a copy of the model that carries it.

`collect_mask_rows` gives every answer mask blocks of the trained width at random response positions (the
multi-block layout of training, fixed seed) and keeps, from one forward per answer, each mask's final hidden
state with the token before its target and the target (`space.adapters.sampler_head_training.MaskRows`).
`run_sampler_head` is `scripts/train_sampler_head.py`: rows for the training and the held-out answers (kept in
`--work_dir`, keyed by the model, the data and the layout, so a rerun reuses them), the head
(`space.adapters.sampler_head_training.train_head`), its measurement on the held-out answers, and a copy of the
model directory that carries the head.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from space.adapters.sampler_head_training import HeadTraining, MaskRows, measure, train_head
from space.errors import SpaceError
from space.io import write_atomic
from space.training.collate import SarCollator
from space.training.data import load_conversations_of
from space.training.distill_prompts import GROUPS, prompt_group
from space.training.samples import MaskingConfig, build_sample
from space.training.templates import get_template
from space.window import batch_masks


@torch.inference_mode()
def collect_mask_rows(model, tokenizer, records: list[dict], masking: MaskingConfig, template: str = "chat_template",
                      seed: int = 0, desc: str = "mask rows") -> MaskRows:
    """The mask rows of every record (one forward per answer, blocks as `masking` places them)."""
    conversations = load_conversations_of(records, desc)
    rng, collate, encoder = random.Random(seed), SarCollator(tokenizer.pad_token_id), get_template(template)
    backbone, dtype = model.get_decoder(), model.get_input_embeddings().weight.dtype
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("hidden", "previous", "target", "offset", "block",
                                                                 "group")}
    blocks = 0
    for record, conversation in tqdm(list(zip(records, conversations)), desc=desc, disable=None):
        pairs = encoder.encode(tokenizer, conversation.turns, conversation.system, conversation.unfinished)
        batch = collate([build_sample(pairs, masking, rng)])
        ids, positions = batch["input_ids"][0], batch["position_ids"][0]
        mask = batch_masks(batch["attention_mask_4d"], batch["position_ids"], model.config, dtype)
        hidden = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                          use_cache=False).last_hidden_state[0, :-1]
        targets, offsets = batch["labels"][0, 1:], batch["mask_offsets"][0, :-1]  # row i scores label i+1
        rows = (offsets > 0) & (targets >= 0)
        if not rows.any():
            continue
        block = torch.cumsum((offsets == 1).long(), 0)[rows] + blocks
        blocks = int(block.max())
        parts["hidden"].append(hidden[rows].to(torch.bfloat16))
        parts["previous"].append(ids[positions[:-1][rows]])  # the real token at the mask's own position
        parts["target"].append(targets[rows])
        parts["offset"].append(offsets[rows])
        parts["block"].append(block)
        parts["group"].append(torch.full((int(rows.sum()),), GROUPS.index(prompt_group(record["id"]))))
    if not parts["target"]:
        raise SpaceError(f"{desc}: no answer is long enough for a mask block")
    return MaskRows(**{key: torch.cat(values) for key, values in parts.items()})


def masking_for(model, width: int, blocks: int, cutoff_len: int) -> MaskingConfig:
    """The multi-block layout of training at `width` (the trained width by default)."""
    from space.tokens import read_mask_spec

    spec = read_mask_spec(model.config)
    if spec is None:
        raise SpaceError("this model has no mask tokens: load a SPACE model")
    masking = MaskingConfig(mask_num=width, mask_id=spec.mask_id, mask_diff=spec.mask_diff, efficient=True,
                            mask_blocks=blocks, cutoff_len=cutoff_len)
    masking.validate()
    return masking


def write_report(path: Path, report: dict) -> None:
    import json

    write_atomic(path, json.dumps(report, indent=2))


@dataclass
class SamplerHeadArguments:
    """The flags of `scripts/train_sampler_head.py`."""

    model: str = field(metadata={"help": "the SPACE adapter directory to add a head to (gated or LoRA)"})
    train_data: str = field(metadata={"help": "self-distilled answers to train on (.jsonl), e.g. runs/default_model/"
                                              "train.jsonl"})
    held_out: str = field(metadata={"help": "answers kept out of training (.jsonl), measured before and after"})
    output_dir: str = field(metadata={"help": "where the copy of --model with the head goes (with the report)"})
    work_dir: str = field(default="runs/sampler_head", metadata={
        "help": "keeps the mask rows of each data file (hundreds of MB); a rerun with the same settings reuses them"})
    width: int | None = field(default=None, metadata={"help": "mask slots per block (default: the trained width)"})
    measure_width: int | None = field(default=None, metadata={"help": "chain width the report measures (default: "
                                                                      "the model's CPU decoding k)"})
    blocks: int = field(default=16, metadata={"help": "mask blocks per answer"})
    cutoff_len: int = 1024
    template: str = "chat_template"
    inner: int = field(default=576, metadata={"help": "width of the head's hidden layer"})
    candidates: int = field(default=32, metadata={"help": "tokens per slot the head ranks at decoding"})
    epochs: float = 2.0
    batch_size: int = 512
    learning_rate: float = 1e-3
    seed: int = 0


def parse_sampler_head_args(argv: list[str] | None = None) -> SamplerHeadArguments:
    from space.cli import parse_flags

    (args,) = parse_flags((SamplerHeadArguments,), argv, "train_sampler_head.py",
                          description="Train a sampler head on a SPACE model's mask rows and add it to a copy.")
    return args


def run_sampler_head(args: SamplerHeadArguments) -> dict:
    """Mask rows (kept in `work_dir`), the head, its measurement on held-out answers, and the model copy."""
    import json
    import shutil
    import zlib

    import space
    from space.adapters.sampler_head import HEAD_FIELD, HEAD_WEIGHTS, save_head
    from space.io import read_records
    from space.models import ADAPTER_FIELDS_FILE, read_space_json

    source, output = Path(args.model), Path(args.output_dir)
    for flag, path in (("--train_data", args.train_data), ("--held_out", args.held_out)):
        if not Path(path).is_file():
            raise SpaceError(f"{flag} {path} not found; the default-model recipe writes train.jsonl and held_out.jsonl")
    if not (source / ADAPTER_FIELDS_FILE).is_file():
        raise SpaceError(f"--model {source} has no {ADAPTER_FIELDS_FILE}: give a SPACE adapter directory")
    if output.resolve() == source.resolve():
        raise SpaceError("--output_dir must differ from --model: the head goes into a copy")
    model, tokenizer = space.load_model(str(source), dtype="float32")  # the CPU decoding dtype
    fields = read_space_json(source)
    width = args.width or int(fields.get("mask_num") or 0)
    measure_width = args.measure_width or int(fields.get("decode_mask_num") or width)
    if not 1 <= measure_width <= width:
        raise SpaceError(f"--measure_width {measure_width} must be between 1 and the collected width {width}")
    masking = masking_for(model, width, args.blocks, args.cutoff_len)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, path, seed in (("train", args.train_data, args.seed + 1), ("held_out", args.held_out, args.seed)):
        # the rows depend on the model, the data and the layout: the file name carries all of them (files by
        # path, size and modification time, so a model or data file rewritten in place is collected again)
        stamps = [[str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns]
                  for file in sorted(source.glob("*.safetensors")) + [source / ADAPTER_FIELDS_FILE, Path(path)]
                  if file.name != HEAD_WEIGHTS]
        key = zlib.crc32(json.dumps([stamps, width, args.blocks, args.cutoff_len, args.template, seed]).encode())
        cached = work / f"mask_rows_{name}_{key:08x}.pt"
        if cached.is_file():
            rows[name] = MaskRows.load(cached)
            continue
        rows[name] = collect_mask_rows(model, tokenizer, read_records(Path(path)), masking, args.template, seed,
                                       f"mask rows ({name})")
        rows[name].save(cached)
    embed = model.get_input_embeddings().weight.detach()
    head_weight = model.get_output_embeddings().weight.detach()
    settings = HeadTraining(args.inner, args.candidates, args.epochs, args.batch_size, args.learning_rate,
                            seed=args.seed)
    start = time.perf_counter()
    head = train_head(rows["train"], embed, head_weight.to(torch.bfloat16), settings)
    seconds = time.perf_counter() - start
    report_rows = measure(rows["held_out"], head_weight, embed, head, args.candidates, measure_width, GROUPS)
    for file in source.iterdir():  # the model's files (not checkpoints, not an earlier head): the head is added
        if file.is_file() and file.name not in (ADAPTER_FIELDS_FILE, HEAD_WEIGHTS, "sampler_head_report.json") \
                and file.suffix != ".lock":  # a training run's lock is not part of the model
            shutil.copy2(file, output / file.name)
    save_head(head, output)
    write_atomic(output / ADAPTER_FIELDS_FILE,
                 json.dumps(dict(fields, **{HEAD_FIELD: head.config.to_json()}), indent=2))
    report = dict(model=str(source), output_dir=str(output), width=width, measure_width=measure_width,
                  train_rows=len(rows["train"]), held_out_rows=len(rows["held_out"]),
                  training=dict(vars(settings), seconds=round(seconds, 1)), rows=report_rows)
    write_report(output / "sampler_head_report.json", report)
    write_report(work / "sampler_head_report.json", report)
    return report


def report_table(report: dict) -> str:
    from space.io import markdown_table

    offsets = range(1, report["measure_width"] + 1)
    columns = ["group", "drafter", "blocks"] + [f"offset {j}" for j in offsets] + [f"reach {j}" for j in offsets]
    return markdown_table(report["rows"], columns + ["accepted"])
