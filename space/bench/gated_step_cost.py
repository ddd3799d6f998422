"""What a gated adapter adds to a decoding step: the same model with and without one, timed side by side.

Owns the measurement behind `scripts/bench_gated_step.py`. A gated adapter (`space.adapters.gated`) leaves AR alone and
adds its low-rank deltas to the mask rows of every SPACE step; what that costs depends on the adapter's shape
(rank, targets) and the step's rows, not on what the adapter learnt. So this needs no trained adapter: it installs
one of the given shape with random weights on a copy of the base (`random_gated_twin`) and decodes one prompt
with both models, interleaved run by run so that drift of the machine hits both alike, for AR, the chain and the
tree. Both models emit the same tokens (the adapter touches mask rows only: every run checks that the output is
the base's AR), and with untrained or random masks their drafts rarely pass, while the tree's copy candidates do
(the answer repeats), so each method takes the same steps on both models and what differs is the cost of a step.
A step's time includes its share of the prompt's prefill, as in `space.decode`'s own step count.
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass, field

import torch

import space
from space.adapters.gated import GatedConfig, add_gated_lora
from space.cli import parse_flags, require_counts
from space.eval.harness import timed_decode
from space.io import markdown_table, provenance, write_atomic
from space.kernels.fast_linear import use_fast_linear
from space.kernels.lean_layers import use_lean_layers

# A HumanEval-sized coding prompt (157 tokens in SmolLM2's chat format): steps then read a cache of 150-350 tokens.
PROMPT = (
    "Complete the following python code.\n\nfrom typing import List\n\n\n"
    "def separate_paren_groups(paren_string: str) -> List[str]:\n"
    '    """ Input to this function is a string containing multiple groups of nested parentheses. Your goal is to\n'
    "    separate those groups into separate strings and return the list of those.\n"
    "    Separate groups are balanced (each open brace is properly closed) and not nested within each other.\n"
    "    Ignore any spaces in the input string.\n"
    "    >>> separate_paren_groups('( ) (( )) (( )( ))')\n    ['()', '(())', '(()())']\n    \"\"\"\n"
)
METHODS = {"ar": ("ar", {}), "chain": ("space", {"tree": False}), "tree": ("space", {"tree": True})}
COLUMNS = ["method", "base_ms_per_step", "gated_ms_per_step", "gated_vs_base", "base_steps", "gated_steps"]
HEADERS = ["method", "base ms/step", "gated ms/step", "gated / base", "base steps", "gated steps"]


@dataclass
class GatedStepArgs:
    """The measurement's settings (the flags of `scripts/bench_gated_step.py`)."""

    rank: int = field(default=32, metadata={"help": "the random adapter's LoRA rank (the recipe's: 32)"})
    mask_num: int = field(default=3, metadata={"help": "SPACE's k for the chain and the tree (CPU default: 3)"})
    max_new_tokens: int = 192
    repeats: int = field(default=5, metadata={"help": "timed runs per model and method (after one warm-up); median"})
    seed: int = 0
    output: str = "outputs/bench_gated_step.json"


def parse_gated_step_args(argv: list[str] | None = None, description: str | None = None) -> GatedStepArgs:
    """`argv` (default: the command line) -> `GatedStepArgs`; a bad flag is one `SpaceError` line."""
    (args,) = parse_flags((GatedStepArgs,), argv, "bench_gated_step.py", description, show_defaults=False)
    require_counts(args, ("rank", "mask_num", "max_new_tokens", "repeats"))  # before minutes of loading and decoding
    return args


def random_gated_twin(model, rank: int, seed: int):
    """A copy of `model` (a HF causal LM with its mask tokens, not yet switched to the fast CPU layers) carrying a
    gated adapter of `rank` on every projection, `lora_B` drawn at random so that every delta is real work."""
    spec = space.read_mask_spec(model.config)
    twin = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # `lora_A`'s initialisation draws from the global generator
        torch.manual_seed(seed)
        add_gated_lora(twin, spec.mask_id, spec.num_ids, GatedConfig(rank=rank, alpha=2.0 * rank))
        with torch.no_grad():
            for name, parameter in twin.named_parameters():
                if name.endswith("lora_B"):
                    parameter.copy_(torch.randn(parameter.shape) * 2e-3)
    return twin.requires_grad_(False).eval()


def measure_gated_step(model, prompt_ids: torch.Tensor, args: GatedStepArgs) -> list[dict]:
    """Median ms per step of `model` and of its `random_gated_twin` for AR, the chain and the tree, interleaved.

    Both are switched to the fast CPU layers as `space.load_model` does on CPU, `model` in place."""
    gated = random_gated_twin(model, args.rank, args.seed)
    models = {"base": model, "gated": gated}
    for each in models.values():
        use_fast_linear(each)
        use_lean_layers(each)
    times = {(name, method): [] for name in models for method in METHODS}
    steps, reference = {}, None
    for repeat in range(args.repeats + 1):  # the first round warms up both models
        for method, (decoder, options) in METHODS.items():
            options = dict(options, mask_num=args.mask_num) if decoder == "space" else options
            for name, each in models.items():
                result, elapsed = timed_decode(each, prompt_ids, decoder,
                                               dict(options, max_new_tokens=args.max_new_tokens, eos_token_id=[]))
                reference = reference if reference is not None else result.tokens.tolist()
                if result.tokens.tolist() != reference:
                    raise RuntimeError(f"{name} {method} differs from the base model's AR output")
                steps[name, method] = result.stats.steps
                if repeat:
                    times[name, method].append(elapsed * 1000 / result.stats.steps)
    rows = []
    for method in METHODS:
        base_ms, gated_ms = (statistics.median(times[name, method]) for name in models)
        rows.append(dict(method=method, base_ms_per_step=round(base_ms, 1), gated_ms_per_step=round(gated_ms, 1),
                         gated_vs_base=round(gated_ms / base_ms, 3), base_steps=steps["base", method],
                         gated_steps=steps["gated", method],
                         runs_ms_per_step={name: [round(t, 1) for t in times[name, method]] for name in models}))
    return rows


def run_gated_step(args: GatedStepArgs, command: str) -> dict:
    """The measurement on SmolLM2-135M-Instruct (fp32, CPU); the report goes to `args.output`."""
    model, tokenizer = space.load_model("smollm2", fast_cpu_linear=False, lean_layers=False)
    space.add_mask_tokens(model, tokenizer, mask_num=max(6, args.mask_num), mask_diff=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    prompt_ids = tokenizer(text, return_tensors="pt").input_ids
    rows = measure_gated_step(model, prompt_ids, args)
    written = dict(command=command, model="SmolLM2-135M-Instruct (GGUF, fp32) + a random gated adapter",
                   rank=args.rank, mask_num=args.mask_num, seed=args.seed, prompt_tokens=prompt_ids.shape[1],
                   max_new_tokens=args.max_new_tokens, repeats=args.repeats, provenance=provenance(), rows=rows)
    write_atomic(args.output, json.dumps(written, indent=2))
    return written


def gated_step_table(rows: list[dict]) -> str:
    """The report's rows as a markdown table (as quoted in docs/benchmarks.md)."""
    return markdown_table(rows, COLUMNS, HEADERS)
