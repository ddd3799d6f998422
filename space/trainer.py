"""HF Trainer for SAR-SFT: one `compute_loss` override, plus a callback that logs mask metrics.

DeepSpeed, bf16, gradient checkpointing, checkpointing and resuming all come from
`TrainingArguments`. `compute_loss` feeds the batch (turning the collator's boolean 4D pattern into
an additive mask of the model's dtype), computes `space.loss.sar_loss`, and accumulates per-offset
mask metrics on the device; `MaskMetricsLogger` converts them to floats only at the logging
interval (one sync per log line, not per step) and adds `mask_loss_j` / `mask_acc_j` to the log.
"""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback

from space.loss import MaskMetrics, sar_loss


class MetricsAccumulator:
    """Running sums of `MaskMetrics` since the last log line."""

    def __init__(self):
        self.sums: MaskMetrics | None = None

    def add(self, metrics: MaskMetrics) -> None:
        if self.sums is None:
            self.sums = MaskMetrics(*(t.detach().clone() for t in (metrics.loss_sum, metrics.correct, metrics.count)))
        else:
            self.sums.loss_sum += metrics.loss_sum.detach()
            self.sums.correct += metrics.correct.detach()
            self.sums.count += metrics.count.detach()

    def pop_means(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        count = self.sums.count.clamp(min=1)
        losses, accuracies = (self.sums.loss_sum / count).tolist(), (self.sums.correct / count).tolist()
        seen = self.sums.count.tolist()
        self.sums = None
        logs = {}
        for offset, (loss, accuracy, n) in enumerate(zip(losses, accuracies, seen), start=1):
            if n:
                logs[f"mask_loss_{offset}"] = round(loss, 4)
                logs[f"mask_acc_{offset}"] = round(accuracy, 4)
        return logs


class MaskMetricsLogger(TrainerCallback):
    def __init__(self, accumulator: MetricsAccumulator):
        self.accumulator = accumulator

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # only training log lines carry mask metrics
            return
        metrics = self.accumulator.pop_means()
        logs.update(metrics)
        if state.log_history:
            state.log_history[-1].update(metrics)  # the Trainer stored a copy before calling us


class SarTrainer(Trainer):
    def __init__(self, *args, mask_num: int = 0, mask_loss_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_num = mask_num
        self.mask_loss_weight = mask_loss_weight
        self.mask_metrics = MetricsAccumulator()
        # Our loss is a per-micro-batch mean (as the original); the Trainer then scales it for
        # gradient accumulation instead of expecting a loss normalised by `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        logger = MaskMetricsLogger(self.mask_metrics)
        self.callback_handler.callbacks.insert(0, logger)  # before the printers, so they show the metrics

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels, offsets = inputs.pop("labels"), inputs.pop("mask_offsets")
        pattern = inputs.pop("attention_mask_4d", None)
        if pattern is not None:
            dtype = next(model.parameters()).dtype
            inputs["attention_mask"] = torch.zeros(pattern.shape, dtype=dtype, device=pattern.device).masked_fill(
                ~pattern, torch.finfo(dtype).min
            )
        outputs = model(**inputs, use_cache=False)
        loss, metrics = sar_loss(outputs.logits, labels, offsets, self.mask_loss_weight, self.mask_num)
        if model.training:
            self.mask_metrics.add(metrics)
        return (loss, outputs) if return_outputs else loss
