"""Baselines through HF `generate`: plain greedy/sampling (`hf`) and prompt-lookup decoding (`prompt_lookup`).

The generation config is built from scratch so nothing leaks in from a checkpoint's
`generation_config.json` (sampling defaults, repetition penalty, top_k=50), and the attention mask
is passed explicitly: otherwise HF infers one from the pad id and a prompt containing that id would
silently change the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from space.adapters import addons
from space.cache import passed_cache
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, check_prompt, eos_ids
from space.decoding.observe import Observer, StreamRelay
from space.decoding.sampling import Sampler
from space.errors import SpaceError
from space.models import unwrap


@dataclass
class PromptLookupOptions(DecodeOptions):
    """Prompt-lookup decoding's options (`hf` takes only the shared `DecodeOptions`)."""

    prompt_lookup_num_tokens: int = 10  # n-gram drafts copied from the context per step

    def validate(self) -> None:
        super().validate()
        if self.prompt_lookup_num_tokens < 1:
            raise SpaceError(f"prompt_lookup_num_tokens must be >= 1 (got {self.prompt_lookup_num_tokens})")


def _generation_config(model, options: DecodeOptions, **extra) -> GenerationConfig:
    """An explicit config: HF fills every field left None from the checkpoint's generation config. A gated model's
    mask ids are suppressed (as the project's own decoders leave their columns out): one emitted and fed back
    would turn the adapter on for its row, and the baseline would no longer be the base model."""
    eos = eos_ids(model, options.eos_token_id)
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    sampling = dict(Sampler.of(options).settings(), typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
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
        suppress_tokens=_input_only(model),
        **(sampling if options.do_sample else {}),  # greedy applies no warpers; HF warns if they are set
        **extra,
    )


def _input_only(model) -> list[int] | None:
    ids = addons(model).input_only
    return None if ids is None else list(range(ids.start, ids.stop))


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
        cache = passed_cache(kwargs)  # `cache=` from transformers 5.24, `past_key_values=` before
        self.cache_lengths.append(cache.get_seq_length() if cache is not None else -1)

    def stats(self, prompt_length: int, generated: int) -> DecodeStats:
        """Tokens committed per forward, from the cache length each forward saw.

        A forward keeps in the cache what it was fed and accepted, but not the token it picks last, so
        forward i (i >= 1) committed `C[i+1] - C[i]` tokens; the first one, which also holds the prompt
        (and since transformers 5.24 prompt lookup's first draft), committed `C[1] - prompt_length + 1`;
        the last one committed what is left.
        """
        stats = DecodeStats()
        lengths = self.cache_lengths
        if not lengths or max(lengths) < 0:  # no cache: one forward per token
            for _ in range(generated):
                stats.record(1)
            return stats
        # The first forward may get no cache (transformers < 5.24 creates it inside the prefill).
        seen = [prompt_length - 1] + lengths[1:]  # the first forward counts as if it saw the prompt but one token
        per_step = [after - before for before, after in zip(seen, seen[1:])]
        per_step.append(generated - sum(per_step))
        for emitted in per_step:
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
    observer = Observer.of(options)
    with _ForwardLog(model) as log:
        # the class's generate: a model loaded with `generate="space"` has its own on the instance
        output = type(model).generate(
            model,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=_generation_config(model, options, **extra),
            streamer=None if observer is None else StreamRelay(observer),
        )
    # transformers 5.0 prompt lookup can overshoot max_new_tokens by one token; never report more
    tokens = output[0, input_ids.shape[1] :][: options.max_new_tokens].clone()
    return DecodeResult(tokens=tokens, stats=log.stats(input_ids.shape[1], tokens.numel()))


def generate(model, input_ids: torch.Tensor, options: DecodeOptions) -> DecodeResult:
    """HF `generate`: one forward per token."""
    return _run(model, input_ids, options)


def generate_prompt_lookup(model, input_ids: torch.Tensor, options: PromptLookupOptions) -> DecodeResult:
    """HF prompt-lookup decoding: n-gram drafts copied from the context, verified greedily."""
    if not options.use_cache:
        raise SpaceError("prompt_lookup needs the KV cache (HF assisted decoding requires one); use use_cache=True")
    return _run(model, input_ids, options, prompt_lookup_num_tokens=options.prompt_lookup_num_tokens)
