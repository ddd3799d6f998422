"""HF Trainer for SAR-SFT: one `compute_loss` override, plus a callback that logs mask metrics.

DeepSpeed, bf16, gradient checkpointing, checkpointing and resuming all come from
`TrainingArguments`. `compute_loss` feeds the batch (turning the collator's boolean 4D pattern into
the backbone's mask with `space.window.batch_masks`, the decoders' own builder), computes
`space.training.loss.sar_loss`, and accumulates per-offset
mask metrics on the device; `MaskMetricsLogger` converts them to floats only at the logging
interval (one sync per log line, not per step) and adds `mask_loss_j` / `mask_acc_j` to the log.
Under data parallelism each rank sees its own share of the batch, so the numerators and the counts
are summed over ranks (one all_reduce per log line) before dividing: the logged means are global.

With a gated adapter (`gated=True`, `space.adapters.gated`) the real tokens are the frozen base's: they have no loss to
learn and no parameter to reach, so `compute_loss` runs them once under `torch.no_grad()` into a KV cache
(lm_head on one row) and feeds only the mask blocks with gradients, on top of that cache. Checkpoints then
hold the adapter's tensors alone (`GATED_WEIGHTS`), not a copy of the base.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from transformers import DynamicCache, Trainer, TrainerCallback

from space.adapters.gated import GATED_WEIGHTS, gated_state_dict, load_gated_weights
from space.cache import cache_argument
from space.models import unwrap
from space.training.loss import MaskMetrics, sar_loss
from space.window import batch_masks


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks of the default process group (a collective); itself when alone."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def means_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """`[3, k]` rows loss_sum, correct, count -> `mask_loss_j` / `mask_acc_j` for the offsets j that were seen."""
    loss_sum, correct, count = sums.tolist()
    logs = {}
    for offset, (loss, right, n) in enumerate(zip(loss_sum, correct, count), start=1):
        if n:
            logs[f"mask_loss_{offset}"] = round(loss / n, 4)
            logs[f"mask_acc_{offset}"] = round(right / n, 4)
    return logs


class MetricsAccumulator:
    """Running sums of `MaskMetrics` (k offsets) since the last log line."""

    def __init__(self, num_offsets: int = 0):
        self.num_offsets = num_offsets
        self.sums: MaskMetrics | None = None

    def add(self, metrics: MaskMetrics) -> None:
        if self.sums is None:
            self.sums = MaskMetrics(*(t.detach().clone() for t in (metrics.loss_sum, metrics.correct, metrics.count)))
        else:
            self.sums.loss_sum += metrics.loss_sum.detach()
            self.sums.correct += metrics.correct.detach()
            self.sums.count += metrics.count.detach()

    def pop_sums(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[3, k]` float sums (zeros when nothing was added, so every rank joins the reduction), then reset."""
        if self.sums is None:
            return torch.zeros(3, self.num_offsets, device=device)
        stacked = torch.stack([self.sums.loss_sum.float(), self.sums.correct.float(), self.sums.count.float()])
        self.sums = None
        return stacked

    def pop_means(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """Means over every rank's predictions since the last call (a collective when distributed)."""
        sums = self.pop_sums(device)
        return means_from_sums(sum_over_ranks(sums) if sums.numel() else sums)  # k = 0 (plain SFT): nothing to sum


class MaskMetricsLogger(TrainerCallback):
    def __init__(self, accumulator: MetricsAccumulator):
        self.accumulator = accumulator

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # only training log lines carry mask metrics
            return
        metrics = self.accumulator.pop_means(args.device)  # every rank logs, so every rank joins the all_reduce
        logs.update(metrics)
        if state.log_history:
            state.log_history[-1].update(metrics)  # the Trainer stored a copy before calling us


class SarTrainer(Trainer):
    def __init__(self, *args, mask_num: int = 0, mask_loss_weight: float = 1.0, gated: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.gated = gated
        self.mask_num = mask_num
        self.mask_loss_weight = mask_loss_weight
        self.mask_metrics = MetricsAccumulator(mask_num)
        # Read before training wraps the model (a DeepSpeed engine's `.config` is its own dict).
        self.model_config = unwrap(self.model).config
        self.cache_name = cache_argument(unwrap(self.model))  # a DeepSpeed engine's forward names no cache
        # Our loss is a per-micro-batch mean (as the original); the Trainer then scales it for
        # gradient accumulation instead of expecting a loss normalised by `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        logger = MaskMetricsLogger(self.mask_metrics)
        self.callback_handler.callbacks.insert(0, logger)  # before the printers, so they show the metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.gated:
            return self.gated_loss(model, dict(inputs), return_outputs)
        inputs = dict(inputs)
        labels, offsets = inputs.pop("labels"), inputs.pop("mask_offsets")
        pattern = inputs.pop("attention_mask_4d", None)
        if pattern is not None:
            inputs["attention_mask"] = batch_masks(pattern, inputs["position_ids"], self.model_config,
                                                   next(model.parameters()).dtype)
        outputs = model(**inputs, use_cache=False)
        loss, metrics = sar_loss(outputs.logits, labels, offsets, self.mask_loss_weight, self.mask_num)
        if model.training:
            self.mask_metrics.add(metrics)
        return (loss, outputs) if return_outputs else loss

    def gated_loss(self, model, inputs: dict, return_outputs: bool = False):
        """The mask blocks' loss on a KV cache of the real tokens computed without gradients (`SarCollator.split`)."""
        prefix = int(inputs.pop("prefix_length")[0])
        labels, offsets, ids, positions = (inputs.pop(key) for key in ("labels", "mask_offsets", "input_ids",
                                                                           "position_ids"))
        masks = batch_masks(inputs.pop("attention_mask_4d"), positions, self.model_config,
                            next(model.parameters()).dtype)
        cache = DynamicCache()  # full layers: a sliding one would drop keys the blocks' mask names
        with torch.no_grad():
            model(input_ids=ids[:, :prefix], position_ids=positions[:, :prefix], use_cache=True, logits_to_keep=1,
                  attention_mask=_rows(masks, slice(0, prefix), slice(0, prefix)), **{self.cache_name: cache})
        outputs = model(input_ids=ids[:, prefix:], position_ids=positions[:, prefix:], use_cache=True,
                        attention_mask=_rows(masks, slice(prefix, None), slice(None)), **{self.cache_name: cache})
        loss, metrics = sar_loss(outputs.logits, labels[:, prefix:], offsets[:, prefix:], self.mask_loss_weight,
                                 self.mask_num)
        if not loss.requires_grad:  # a batch without mask blocks: a zero loss the backward pass accepts
            loss = loss + 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)
        if model.training:
            self.mask_metrics.add(metrics)
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A gated run saves the adapter's tensors only; the base is frozen and never changes."""
        if not self.gated:
            return super()._save(output_dir, state_dict)
        from safetensors.torch import save_file

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            tensors = gated_state_dict(self.accelerator.unwrap_model(self.model))
        else:  # DeepSpeed hands the whole state dict
            wanted = set(gated_state_dict(unwrap(self.accelerator.unwrap_model(self.model))))
            tensors = {name.removeprefix("module."): t for name, t in state_dict.items()
                       if name.removeprefix("module.") in wanted}
        if not tensors:  # e.g. DeepSpeed's empty fallback state dict: never write an empty adapter
            raise RuntimeError("the gated adapter's tensors are missing from the state dict to save")
        save_file({name: t.detach().float().contiguous().cpu() for name, t in tensors.items()},
                  os.path.join(output_dir, GATED_WEIGHTS))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.gated:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_gated_weights(model if model is not None else self.model,
                           os.path.join(resume_from_checkpoint, GATED_WEIGHTS))


def _rows(masks, queries: slice, keys: slice):
    """The query rows and key columns of an additive mask, or of each layer type's mask."""
    if isinstance(masks, dict):
        return {kind: mask[:, :, queries, keys] for kind, mask in masks.items()}
    return masks[:, :, queries, keys]
