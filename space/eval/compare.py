"""One prompt, several methods, side by side: text, speed, tokens per step and identity with AR.

The quick comparison behind `scripts/generate.py` (the evaluation harness does the same over datasets,
interleaved and resumable). Timing lives here, never in a decoder.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

import space
from space.cli import parse_flags
from space.decoding import option_names, parse_options, prepare
from space.eval.harness import timed_decode
from space.io import write_json


@dataclass
class GenerateArguments:
    llm_dir: str | None = field(default=None, metadata={
        "help": "HF dir, hub name or .gguf file (default: embedded SmolLM2-135M)"})
    adapter: str | None = field(default=None, metadata={"help": "peft adapter directory applied on top of --llm_dir"})
    prompt: str = "Write a Python function that checks whether a number is prime."
    chat: bool = field(default=True, metadata={"help": "wrap the prompt in the tokenizer's chat template"})
    methods: str = "space,ar,hf"
    mask_num: int | None = field(default=None, metadata={"help": "k (default: the model config, else 3)"})
    max_new_tokens: int = 128
    use_cache: bool = True
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sampling_mode: Literal["exact", "original"] = field(default="exact", metadata={"help": "space and sdsat"})
    seed: int = 0
    dtype: str = "auto"
    device: str = "cpu"
    output: str | None = field(default=None, metadata={"help": "write the results as JSON here"})
    stream: bool = field(default=False, metadata={
        "help": "print each answer as it is decoded; a step's tokens arrive together (bursts of 2+ in green)"})


def parse_compare_args(argv=None, description: str | None = None) -> GenerateArguments:
    """`--flag value` (booleans as true/false); a bad flag is one `SpaceError` line."""
    (args,) = parse_flags((GenerateArguments,), argv, "generate.py", description)
    return args


def decode_options(args: GenerateArguments, method: str) -> dict:
    """The options `method` takes, from the flags (`--mask_num` only when given)."""
    options = {name: value for name, value in asdict(args).items() if name in option_names(method)}
    if args.mask_num is None:
        options.pop("mask_num", None)
    return options


def compare(args: GenerateArguments) -> dict:
    """Answer `args.prompt` with each method (after an untimed warm-up); per method its text, tokens, time,
    steps and, in greedy mode, whether it equals AR token for token."""
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in space.DECODERS:
            raise space.SpaceError(f"unknown method {method!r} in --methods; available: {sorted(space.DECODERS)}")
    options = {method: decode_options(args, method) for method in methods}
    for method in methods:  # a bad option: one line before the model loads
        parse_options(method, options[method])
    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=args.device)
    for method in methods:  # what each method needs on the model (the embedded base gets untrained masks)
        note = prepare(method, model, tokenizer, [options[method]], untrained=args.llm_dir in (None, "smollm2"))
        if note:
            print(note, file=sys.stderr)
    text = args.prompt
    if args.chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    input_ids = tokenizer(text, return_tensors="pt").input_ids

    results = {}
    for method in methods:
        space.decode(model, input_ids, method, **dict(options[method], max_new_tokens=4))  # warm-up
        steps = []
        watched = dict(options[method], on_step=steps.append)
        if args.stream:
            print(f"=== {method} (streaming)", flush=True)
            watched["streamer"] = BurstPrinter(tokenizer)
        result, seconds = timed_decode(model, input_ids, method, watched)
        results[method] = dict(
            first_token_seconds=round(steps[0].seconds, 4) if steps else None,
            mean_step_seconds=round((steps[-1].seconds - steps[0].seconds) / (len(steps) - 1), 4)
            if len(steps) > 1 else None,
            text=tokenizer.decode(result.tokens, skip_special_tokens=True),
            tokens=result.tokens.tolist(),
            seconds=round(seconds, 3),
            tokens_per_second=round(len(result.tokens) / seconds, 2),
            steps=result.stats.steps,
            mean_tokens_per_step=round(result.stats.mean_tokens_per_step, 3),
        )
    if "ar" in results and not args.do_sample:
        for name, result in results.items():
            result["identical_to_ar"] = result["tokens"] == results["ar"]["tokens"]
    if args.output:
        write_json(args.output, results)
    return results


class BurstPrinter:
    """A streamer that prints an answer as it arrives, one step's tokens at a time: a step that commits two or more
    tokens (a draft or a copy accepted) is shown in green on a terminal. The prompt (the first `put`) is skipped."""

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out or sys.stdout
        self.tokens: list[int] = []
        self.shown = 0
        self.prompt_seen = False
        self.color = getattr(self.out, "isatty", lambda: False)()

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        new = value.reshape(-1).tolist()
        self.tokens += new
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for its end
            return
        piece, self.shown = text[self.shown:], len(text)
        if self.color and len(new) > 1:
            piece = f"\033[32m{piece}\033[0m"
        self.out.write(piece)
        self.out.flush()

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        self.out.write(text[self.shown:] + "\n")
        self.out.flush()
