"""The decoder registry and the public entry points `decode` and `decode_batch`.

Each method lives in a module of its own with a plain function `generate(model, input_ids, options) ->
DecodeResult`, its own options dataclass (a subclass of `DecodeOptions`, which holds what every method
reads) and, where the method needs something on the model first, a preparation step
`prepare(model, tokenizer, options, untrained) -> note` (SPACE's mask tokens, SDSAT's adaptive token,
self_spec's skip set). `DECODERS` maps a method name to `Decoder(generate, Options, prepare, generate_batch)`;
adding a method is one module and one line here. The option names, their validation, the error for an option a
method does not take, the state an evaluation carries from prompt to prompt and `decode`'s docstring all come from the
Options class; `prepare` runs a method's step, so a harness loops over methods without knowing them. A method
that batches also has `generate_batch(model, prompts, options, batch_size)` (its rows run in
`space.decoding.batch`); `decode_batch` checks the prompts and gives each row its own options (seed, budget).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from space.decoding import ar, hf, sdsat, self_spec
from space.decoding import space as space_decoding
from space.decoding.batch import row_seeds
from space.decoding.common import (
    SEED_RANGE,
    DecodeOptions,
    DecodeResult,
    DecodeStats,
    check_model,
    check_prompt,
    fit_context,
)
from space.errors import SpaceError


@dataclass(frozen=True)
class Decoder:
    """A decoding method: its loop and its options class."""

    generate: Callable[..., DecodeResult]  # generate(model, input_ids, options: Options) -> DecodeResult
    Options: type[DecodeOptions] = DecodeOptions
    # prepare(model, tokenizer, options: list[dict], untrained: bool) -> a note or None (see `prepare`)
    prepare: Callable[..., str | None] | None = None
    # generate_batch(model, prompts: list of [1, n_i], options: list[Options]) -> list[DecodeResult]; None: the
    # method decodes one prompt at a time
    generate_batch: Callable[..., list[DecodeResult]] | None = None

    def option_names(self) -> list[str]:
        return self.Options.option_names()

    def session_options(self) -> dict:
        return self.Options.session_options()


DECODERS: dict[str, Decoder] = {
    "ar": Decoder(ar.generate, generate_batch=ar.generate_batch),
    "space": Decoder(space_decoding.generate, space_decoding.SpaceOptions, space_decoding.prepare,
                     space_decoding.generate_batch),
    "hf": Decoder(hf.generate),
    "prompt_lookup": Decoder(hf.generate_prompt_lookup, hf.PromptLookupOptions),
    "self_spec": Decoder(self_spec.generate, self_spec.SelfSpecOptions, self_spec.prepare),
    "sdsat": Decoder(sdsat.generate, sdsat.SdsatOptions, sdsat.prepare),
}


def decoder(method: str) -> Decoder:
    if method not in DECODERS:
        raise SpaceError(f"unknown method {method!r}; available: {sorted(DECODERS)}")
    return DECODERS[method]


def option_names(method: str) -> list[str]:
    """The options `method` takes (the shared ones first), e.g. to derive command-line flags from."""
    return decoder(method).option_names()


def session_options(method: str) -> dict:
    """Fresh values of the options `method` carries from prompt to prompt of one run (self_spec: its
    threshold state, so γ carries over as in the paper's evaluation); {} for most methods."""
    return decoder(method).session_options()


def prepare(method: str, model, tokenizer, options: list[dict], untrained: bool = False) -> str | None:
    """Get `model` ready for `method` before anything is timed: add or check what the method needs on it, and
    rewrite `options` (one dict of `decode` options per run of the method, e.g. one per k) in place where
    something is resolved once for every call (self_spec's skip-set file becomes its entry). `untrained`: the
    model is a base shipped without trained draft tokens, to which untrained ones may be added (lossless, just
    slow). Returns a note for the user, or None; a method that cannot run is one clear `SpaceError`."""
    if not isinstance(options, list) or not all(isinstance(run, dict) for run in options):
        raise SpaceError(f"options must be a list of dicts, one per run of {method!r} (got {type(options).__name__})")
    check_model(model)
    step = decoder(method).prepare
    return None if step is None else step(model, tokenizer, options, untrained)


def parse_options(method: str, options: dict) -> DecodeOptions:
    """`method`'s Options from keyword options, validated; an option it does not take is one clear error."""
    names = option_names(method)
    refused = sorted(set(options) - set(names))
    if refused:
        elsewhere = {name: sorted(m for m in DECODERS if name in option_names(m)) for name in refused}
        if all(elsewhere.values()):
            owners = "; ".join(f"{name!r} is an option of {', '.join(elsewhere[name])}" for name in refused)
            words = "option " + repr(refused[0]) if len(refused) == 1 else f"options {refused}"
            raise SpaceError(f"method {method!r} takes no {words} ({owners}); its options: {names}")
        raise SpaceError(f"unknown option(s) {refused} for method {method!r}; its options: {names}")
    parsed = decoder(method).Options(**options)
    parsed.validate()
    return parsed


def decode(model, input_ids: torch.Tensor, method: str = "space", **options) -> DecodeResult:
    parsed = parse_options(method, options)
    check_prompt(model, input_ids)
    return DECODERS[method].generate(model, input_ids, fit_context(model, input_ids, parsed))


def batching_methods() -> list[str]:
    """The methods `decode_batch` runs on several prompts in one forward per step."""
    return [method for method, entry in DECODERS.items() if entry.generate_batch is not None]


def decode_batch(model, prompts, method: str = "space", attention_mask: torch.Tensor | None = None,
                 batch_size: int | None = None, **options) -> list[DecodeResult]:
    """Generate from many prompts at once: result i is what `decode` of prompt i alone returns (greedy: the same
    tokens; sampling: the same target distribution, row i drawing from its own generator seeded `seed + i`). Each
    row stops at its own EOS and its own `max_new_tokens` (cut to the room its prompt leaves), and leaves the
    batch when it does.

    `prompts`: a list of 1-D LongTensors of any lengths, or a `[B, n]` LongTensor, left-padded, with its
    `attention_mask` (what a tokenizer with `padding_side="left"` returns; no mask: no padding). `batch_size`: at
    most that many prompts decode at once, a finished one's place going to the next (continuous batching); None:
    all at once. The options are `decode`'s. Methods that batch: see `batching_methods()` (the others take one
    prompt at a time)."""
    parsed = parse_options(method, options)
    rows = split_prompts(prompts, attention_mask)
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise SpaceError(f"batch_size must be a whole number >= 1 or None (got {batch_size!r})")
    if len(rows) > 1 and (parsed.streamer is not None or parsed.on_step is not None):
        raise SpaceError("a streamer or on_step callback follows one prompt (as transformers' streamers do); "
                         "decode_batch of several prompts takes neither")
    entry = DECODERS[method]
    if entry.generate_batch is None:
        if len(rows) > 1 and batch_size != 1:
            raise SpaceError(f"method {method!r} decodes one prompt at a time; the methods that batch are "
                             f"{batching_methods()} (or pass batch_size=1)")
        for row in rows:
            check_prompt(model, row)
        return [entry.generate(model, row, fit_context(model, row, parsed)) for row in rows]
    for row in rows:
        check_prompt(model, row)
    seeds = row_seeds(parsed.seed, len(rows), SEED_RANGE)
    row_options = [replace(fit_context(model, row, parsed), seed=seed) for row, seed in zip(rows, seeds)]
    return entry.generate_batch(model, rows, row_options, batch_size)


def split_prompts(prompts, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """`decode_batch`'s prompts as `[1, n_i]` rows, padding removed; one line for anything else."""
    if isinstance(prompts, torch.Tensor) and prompts.dim() == 2:
        if prompts.dtype != torch.long:
            raise SpaceError(f"prompts must be a LongTensor of token ids (got {prompts.dtype})")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompts)
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != prompts.shape:
            shape = getattr(attention_mask, "shape", type(attention_mask).__name__)
            raise SpaceError(f"attention_mask must be a tensor of the prompts' shape {tuple(prompts.shape)} "
                             f"(got {tuple(shape) if isinstance(shape, torch.Size) else shape})")
        keep = attention_mask.to(prompts.device) != 0
        if bool((attention_mask != 0).logical_and(attention_mask != 1).any()):
            raise SpaceError("attention_mask must hold 0 (padding) and 1 (token) only")
        # left padding: once a row's tokens start they run to its end
        if bool((keep[:, :-1] & ~keep[:, 1:]).any()):
            raise SpaceError("the prompts are right-padded (a 0 after a 1 in attention_mask); decode_batch takes "
                             "left padding: tokenize with padding_side='left'")
        prompts = [row[kept] for row, kept in zip(prompts, keep)]
    elif attention_mask is not None:
        raise SpaceError("attention_mask goes with a [B, n] tensor of prompts; a list of prompts needs none")
    if not isinstance(prompts, (list, tuple)):
        raise SpaceError("prompts must be a list of 1-D LongTensors or a left-padded [B, n] LongTensor (got "
                         f"{type(prompts).__name__})")
    if not prompts:
        raise SpaceError("no prompts: decode_batch needs at least one")
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, torch.Tensor) or prompt.dtype != torch.long or prompt.dim() != 1:
            raise SpaceError(f"prompt {i} must be a 1-D LongTensor of token ids (got "
                             f"{getattr(prompt, 'shape', type(prompt).__name__)})")
        if prompt.numel() == 0:
            raise SpaceError(f"prompt {i} is empty: every prompt needs at least one token")
        rows.append(prompt[None])
    return rows


def _options_doc() -> str:
    shared = DecodeOptions.option_names()
    lines = [f"    every method: {', '.join(shared)}"]
    for method, entry in DECODERS.items():
        own = [f.name for f in fields(entry.Options) if f.name not in shared]
        where = f"{entry.Options.__module__}.{entry.Options.__qualname__}"
        lines.append(f"    {method}: {', '.join(own) if own else '(the shared ones only)'}"
                     + (f" ({where})" if own else ""))
    return "\n".join(lines)


decode.__doc__ = f"""Generate from a `[1, n]` prompt with `method` (one of `DECODERS`).

    Options, by method (generated from each method's Options class; defaults and meanings there; None
    takes the model config's value):
{_options_doc()}

    An unknown method, an option the method does not take, or one of the wrong type is a `SpaceError`
    naming the fix. `max_new_tokens` beyond the room the model's context leaves after the prompt is cut
    to that room, with a `SpaceWarning`. `streamer` (an HF streamer) and `on_step` (a callable) watch the decode
    as it goes: `space.decoding.observe`.
    """


__all__ = ["DECODERS", "DecodeOptions", "DecodeResult", "DecodeStats", "Decoder", "batching_methods", "decode",
           "decode_batch", "option_names", "parse_options", "prepare", "session_options"]
