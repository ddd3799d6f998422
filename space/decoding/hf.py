"""Baselines through HF `generate`: plain greedy/sampling (`hf`) and prompt-lookup decoding (`prompt_lookup`).

The generation config is built from scratch so nothing leaks in from a checkpoint's
`generation_config.json` (sampling defaults, repetition penalty, top_k=50), and the attention mask
is passed explicitly: otherwise HF infers one from the pad id and a prompt containing that id would
silently change the output.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, check_prompt, eos_ids
from space.models import unwrap


def _generation_config(model, options: DecodeOptions, **extra) -> GenerationConfig:
    """An explicit config: HF fills every field left None from the checkpoint's generation config."""
    eos = eos_ids(model, options.eos_token_id)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    sampling = dict(
        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
    )
    return GenerationConfig(
        max_new_tokens=options.max_new_tokens,
        min_new_tokens=0,
        do_sample=options.do_sample,
        num_beams=1,
        use_cache=options.use_cache,
        # No stop id must still be a value, or HF takes the checkpoint's; vocab_size is never generated.
        eos_token_id=eos or [model.config.vocab_size],
        pad_token_id=pad,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        **(sampling if options.do_sample else {}),  # greedy applies no warpers; HF warns if they are set
        **extra,
    )


class _ForwardLog:
    """Records the cache length seen by each model forward, to recover tokens committed per forward."""

    def __init__(self, model):
        self.model = model
        self.cache_lengths: list[int] = []

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self.cache_lengths.append(cache.get_seq_length() if cache is not None else -1)

    def stats(self, generated: int) -> DecodeStats:
        """Between forwards the cache grows by exactly the tokens committed (HF crops rejected drafts)."""
        stats = DecodeStats()
        lengths = self.cache_lengths
        if not lengths or min(lengths) < 0:  # no cache: one forward per token
            for _ in range(generated):
                stats.record(1)
            return stats
        per_step = [after - before for before, after in zip(lengths[1:], lengths[2:])]
        # The first forward is the prefill; it emits one token. The last emits what is left.
        per_step = [1] + per_step
        per_step.append(generated - sum(per_step))
        for emitted in per_step[: len(lengths)]:
            stats.record(emitted, accepted=emitted - 1)
        return stats


@torch.inference_mode()
def _run(model, input_ids: torch.Tensor, options: DecodeOptions, **extra) -> DecodeResult:
    check_prompt(model, input_ids)
    model = unwrap(model)
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    if options.seed is not None:
        torch.manual_seed(options.seed)  # HF samples from the global generator
    with _ForwardLog(model) as log:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=_generation_config(model, options, **extra),
        )
    tokens = output[0, input_ids.shape[1] :].clone()
    return DecodeResult(tokens=tokens, stats=log.stats(tokens.numel()))


def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    """HF `generate`: one forward per token."""
    return _run(model, input_ids, options)


def generate_prompt_lookup(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    """HF prompt-lookup decoding: n-gram drafts copied from the context, verified greedily."""
    return _run(model, input_ids, options, prompt_lookup_num_tokens=options.prompt_lookup_num_tokens)
