"""`model.generate` with SPACE: the function transformers' `custom_generate` loads, and the opt-in
`space.load_model(..., generate="space")` that makes it the model's own `generate` (so pipelines use it).

`generate(model, input_ids, ...)` takes what HF's `generate` takes, resolves the generation config the way HF does
(the call's arguments over `generation_config` over the model's over the global defaults), decodes with a lossless
method of `space.decode` (`space_method`, default `space`; one prompt, or several left-padded rows through
`space.decode_batch`), and returns what HF returns: the sequences with their prompts (rows that end early padded
with `pad_token_id`), or with `return_dict_in_generate=True` a `SpaceGenerateOutput` that also carries each row's
decode statistics. Every setting that would change the output is either honoured (`max_new_tokens`/`max_length`,
`do_sample`, `temperature`, `top_k`, `top_p`, `eos_token_id`, `num_return_sequences` when sampling, a `streamer`)
or refused in one line naming it; none is silently ignored. Settings with no effect on a lossless decoder's output
(cache layout, compilation, assistant and beam-only fields) are accepted.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

import space
from space.decoding import DecodeOptions, option_names
from space.errors import SpaceError

HONOURED = {"max_length", "max_new_tokens", "do_sample", "use_cache", "temperature", "top_k", "top_p",
            "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id", "num_return_sequences"}
# no effect on what a lossless decoder returns: how HF would lay out its cache or compile, what only beam search or
# an assistant model reads, and bookkeeping
NO_EFFECT = {"cache_implementation", "cache_config", "max_cache_len", "compile_config", "disable_compile",
             "low_memory", "prefill_chunk_size", "early_stopping", "length_penalty", "decoder_start_token_id",
             "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
             "assistant_lookbehind", "target_lookbehind", "assistant_early_exit", "transformers_version",
             "_from_model_config", "continuous_batching_config"}
REFUSED_ARGUMENTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "assistant_model",
                     "negative_prompt_ids", "negative_prompt_attention_mask")
FROM_CONFIG = {"max_new_tokens", "eos_token_id", "use_cache", "do_sample", "temperature", "top_k", "top_p",
               "streamer"}  # decode options that come from the generation config or generate's own arguments


@dataclass
class SpaceGenerateOutput(GenerateDecoderOnlyOutput):
    """HF's decoder-only output (`sequences`) plus each row's decode statistics (`space.decode`'s `stats`)."""

    decode_stats: list | None = None
    method: str | None = None


def generate(model, inputs: torch.Tensor | None = None, generation_config=None, logits_processor=None,
             stopping_criteria=None, prefix_allowed_tokens_fn=None, synced_gpus=None, assistant_model=None,
             streamer=None, negative_prompt_ids=None, negative_prompt_attention_mask=None, space_method: str = "space",
             k: int | None = None, **kwargs):
    """`model.generate` with a lossless `space.decode` method (`space_method`); `k` is SPACE's `mask_num`, and any
    other option of that method (`tree`, `branch_width`, `seed`, `on_step`, ...) may be passed by name."""
    refused = [name for name, value in zip(REFUSED_ARGUMENTS, (logits_processor, stopping_criteria,
                                                               prefix_allowed_tokens_fn, assistant_model,
                                                               negative_prompt_ids, negative_prompt_attention_mask))
               if value is not None and not (isinstance(value, list) and not value)]
    if refused or synced_gpus:
        raise SpaceError(f"generate with space does not apply {(refused or ['synced_gpus'])[0]}: its answers are "
                         "the lossless decoder's own; leave it out")
    if space_method not in space.DECODERS:
        raise SpaceError(f"space_method must be one of {sorted(space.DECODERS)} (got {space_method!r})")
    own = set(option_names(space_method)) - FROM_CONFIG - set(DecodeOptions.option_names()) | {"seed", "on_step"}
    options = {name: kwargs.pop(name) for name in list(kwargs) if name in own}
    if k is not None:
        options["mask_num"] = k
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
    attention_mask = kwargs.pop("attention_mask", None)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise SpaceError("generate with space takes input_ids as a [batch, length] LongTensor")
    try:
        config, unused = model._prepare_generation_config(generation_config, **kwargs)  # HF's own precedence rules
    except ValueError as error:  # HF's own validation of the settings
        raise SpaceError(f"generate: {str(error).strip().splitlines()[0]}") from error
    leftover = sorted(name for name, value in unused.items() if value is not None)
    if leftover:
        raise SpaceError(f"generate with space does not take {leftover[0]!r}; it takes generate's arguments, "
                         f"space_method, k and the options of {space_method!r}: {sorted(own)}")
    check_config(config)
    rows = input_ids.repeat_interleave(config.num_return_sequences or 1, dim=0)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(config.num_return_sequences or 1, 0)
    options.update(decode_options(config, input_ids.shape[1]))
    if streamer is not None:
        if rows.shape[0] > 1:
            raise SpaceError("a streamer follows one sequence (as in transformers); generate one prompt with it")
        options["streamer"] = streamer
    if config.do_sample and options.get("seed") is None:
        options["seed"] = int(torch.randint(0, 2**62, (1,)).item())  # from torch's global generator, as HF samples
    if rows.shape[0] == 1 and mask is None:
        results = [space.decode(model, rows, space_method, **options)]
    else:
        results = space.decode_batch(model, rows, space_method, attention_mask=mask, **options)
    sequences = with_prompts(rows, results, pad_token_id(config))
    if config.return_dict_in_generate:
        return SpaceGenerateOutput(sequences=sequences, decode_stats=[r.stats for r in results], method=space_method)
    return sequences


def check_config(config) -> None:
    """One line for the first setting that would change the output and that decoding with space does not apply:
    anything set to other than its global default (or, for fields without one, other than off: None, False, 0,
    an empty list, a guidance scale of 1)."""
    defaults = config._get_default_generation_params()
    for name, value in config.to_dict().items():
        if name in HONOURED or name in NO_EFFECT or value is None:
            continue
        if (value == defaults[name]) if name in defaults else (value in (False, 0, []) or
                                                              (name == "guidance_scale" and value == 1)):
            continue
        raise SpaceError(f"generate with space cannot apply {name}={value!r}: it would change the output and the "
                         f"lossless decoders do not implement it; leave it unset"
                         + (f" or at {defaults[name]!r}" if name in defaults else ""))


def decode_options(config, prompt_length: int) -> dict:
    """The decode options a resolved generation config sets."""
    if config.max_new_tokens is not None:
        budget = config.max_new_tokens
    else:
        budget = (config.max_length or 20) - prompt_length
        if budget < 1:
            raise SpaceError(f"max_length {config.max_length} leaves no room after a {prompt_length}-token prompt; "
                             "pass max_new_tokens")
    options = dict(max_new_tokens=budget, use_cache=bool(config.use_cache if config.use_cache is not None else True),
                   do_sample=bool(config.do_sample))
    if config.eos_token_id is not None:
        options["eos_token_id"] = config.eos_token_id
    if config.do_sample:
        options.update(temperature=float(config.temperature if config.temperature is not None else 1.0),
                       top_k=int(config.top_k or 0), top_p=float(config.top_p if config.top_p is not None else 1.0))
    return options


def pad_token_id(config) -> int:
    """What fills a row that ended early: the config's pad id, else its first EOS id (as HF does), else 0."""
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = config.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return int(eos) if eos is not None else 0


def with_prompts(rows: torch.Tensor, results: list, pad: int) -> torch.Tensor:
    """`[B, n + longest answer]`: each row's prompt (padding kept), its answer, then `pad`."""
    longest = max(r.tokens.numel() for r in results)
    sequences = torch.full((rows.shape[0], rows.shape[1] + longest), pad, dtype=torch.long, device=rows.device)
    sequences[:, : rows.shape[1]] = rows
    for i, result in enumerate(results):
        sequences[i, rows.shape[1]: rows.shape[1] + result.tokens.numel()] = result.tokens.to(rows.device)
    return sequences


def use_space_generate(model, space_method: str = "space", **defaults):
    """Make `model.generate` decode with `generate` (this module) on this model object only: `pipeline(
    "text-generation", model=model)` and any code that calls `model.generate` then use it. `defaults`: options
    every call gets unless it passes its own (e.g. `k`)."""

    def bound(self, *args, **kwargs):
        kwargs.setdefault("space_method", space_method)
        for name, value in defaults.items():
            kwargs.setdefault(name, value)
        return generate(self, *args, **kwargs)

    model.generate = types.MethodType(bound, model)
    return model
