"""The decoder registry and the public entry point `decode`.

Each method lives in a module of its own with a plain function `generate(model, input_ids, options) ->
DecodeResult`, its own options dataclass (a subclass of `DecodeOptions`, which holds what every method
reads) and, where the method needs something on the model first, a preparation step
`prepare(model, tokenizer, options, untrained) -> note` (SPACE's mask tokens, SDSAT's adaptive token,
self_spec's skip set). `DECODERS` maps a method name to `Decoder(generate, Options, prepare)`; adding a method
is one module and one line here. The option names, their validation, the error for an option a method does
not take, the state an evaluation carries from prompt to prompt and `decode`'s docstring all come from the
Options class; `prepare` runs a method's step, so a harness loops over methods without knowing them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from space.decoding import ar, hf, sdsat, self_spec
from space.decoding import space as space_decoding
from space.decoding.common import DecodeOptions, DecodeResult, DecodeStats, check_model, check_prompt, fit_context
from space.errors import SpaceError


@dataclass(frozen=True)
class Decoder:
    """A decoding method: its loop and its options class."""

    generate: Callable[..., DecodeResult]  # generate(model, input_ids, options: Options) -> DecodeResult
    Options: type[DecodeOptions] = DecodeOptions
    # prepare(model, tokenizer, options: list[dict], untrained: bool) -> a note or None (see `prepare`)
    prepare: Callable[..., str | None] | None = None

    def option_names(self) -> list[str]:
        return self.Options.option_names()

    def session_options(self) -> dict:
        return self.Options.session_options()


DECODERS: dict[str, Decoder] = {
    "ar": Decoder(ar.generate),
    "space": Decoder(space_decoding.generate, space_decoding.SpaceOptions, space_decoding.prepare),
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
    to that room, with a `SpaceWarning`.
    """


__all__ = ["DECODERS", "DecodeOptions", "DecodeResult", "DecodeStats", "Decoder", "decode", "option_names",
           "parse_options", "prepare", "session_options"]
