"""The skip-layer search on a model, end to end: `search_skip_layers(args) -> summary`, what
`scripts/search_skip_layers.py` runs.

Each trial decodes every calibration prompt greedily with `self_spec` (`max_new_tokens`, no early
stop, γ carried from prompt to prompt) and scores tokens/s; `space.eval.skip_search` proposes the
next skip set and keeps the resumable trial log. Before the search: a warm-up, then the AR baseline
(the speedup reference and the cost of one trial, so a budget too small for one trial is refused
up front). After it, the best set is written into `args.output` (the original `skip_layers.json`
format; other entries are kept).

The trial log resumes only under the settings its tokens/s were measured with (`search_settings`: the
model, dtype, device, calibration prompts, tokens per prompt, draft settings, the machine and torch);
they are checked right after the model is loaded, before the baseline, and a rerun with other ones is
refused naming the flag.

The optimum depends on the hardware and software stack (docs/spec/SELF_SPECULATIVE.md §8.3): search on the machine
you will decode on, with the dtype and device you will use.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import space
from space.cli import parse_flags
from space.decoding.skip_layers import SkipLayers, check_skippable, load_skip_file, model_key, save_skip_file
from space.decoding.threshold import ThresholdState
from space.eval.harness import timed_decode
from space.eval.skip_search import CALIBRATION_PROMPTS, SHIPPED_SKIP_FILE, TrialLog, search
from space.io import OutputLock, device_name


def _flag(default, help: str | None = None):
    return field(default=default, metadata={"help": help} if help else {})


@dataclass
class SearchArgs:
    """The search's settings (the flags of `scripts/search_skip_layers.py`)."""

    llm_dir: str | None = _flag(None, "HF dir, hub name or .gguf file (default: embedded SmolLM2-135M)")
    adapter: str | None = _flag(None, "peft adapter directory applied on top of --llm_dir")
    dtype: str = _flag("float32")
    device: str = _flag("cpu", "cpu, cuda or auto")
    prompts: str = _flag(str(CALIBRATION_PROMPTS), "JSON list of calibration prompt strings")
    chat: bool = _flag(False, "wrap each prompt in the tokenizer's chat template")
    max_new_tokens: int = _flag(32, "tokens per prompt per trial (reference: 32)")
    time_budget: float = _flag(3600.0, "seconds for the whole search")
    n_trials: int | None = _flag(None, "new trials at most (default: until the budget ends)")
    output: str = _flag(str(SHIPPED_SKIP_FILE), "skip_layers.json to write the best set into")
    key: str | None = _flag(None, "entry name in --output (default: the model's name)")
    log: str | None = _flag(None, "JSONL trial log (default: outputs/self_spec/search_<key>.jsonl)")
    max_draft: int = _flag(8, "K_max of the decoder during the search")
    draft_threshold: float = _flag(0.8, "initial γ during the search")
    seed: int = _flag(1, "seed of the optimiser")
    progress: bool = _flag(True)


def parse_search_args(argv: list[str] | None = None, description: str | None = None) -> SearchArgs:
    """`argv` (default: the command line) -> `SearchArgs`; booleans take `true/false`."""
    (args,) = parse_flags((SearchArgs,), argv, "search_skip_layers.py", description, show_defaults=False)
    return args


def search_skip_layers(args: SearchArgs) -> dict:
    """Search the best skip set for `args.llm_dir` and write it into `args.output`; returns the summary."""
    start = time.perf_counter()
    if args.time_budget <= 0:
        raise space.SpaceError(f"--time_budget must be > 0 seconds (got {args.time_budget})")
    if args.max_new_tokens < 2:
        raise space.SpaceError("--max_new_tokens must be >= 2: with one token no draft is ever made")
    if args.n_trials is not None and args.n_trials < 1:
        raise space.SpaceError(f"--n_trials must be at least 1 (got {args.n_trials}); leave it out to search "
                               "until the budget ends")
    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=args.device)
    check_skippable(model)
    prompts = load_prompts(args.prompts, tokenizer, args.chat, model.device)
    key = args.key or model_key(model)
    output = Path(args.output)
    log = Path(args.log) if args.log else Path("outputs") / "self_spec" / f"search_{key}.jsonl"
    num_layers = model.config.num_hidden_layers
    settings = search_settings(args, model, prompts)
    with OutputLock.beside(log, "--log"):  # one search per log: two would measure and append the same trials
        TrialLog(log, num_layers, settings).load()  # a log measured otherwise: refused before the baseline runs
        common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])  # always the same token count

        def options(state=None) -> dict:
            return dict(common, max_draft=args.max_draft, draft_threshold=args.draft_threshold, threshold_state=state)

        # warm-up (first-call costs), then the AR baseline: the speedup reference and the cost of one trial
        warm_up(model, prompts[0], options())
        baseline = timed_pass(model, prompts, "ar", common)
        print(f"AR baseline: {baseline['tokens_per_second']:.2f} tokens/s on {len(prompts)} prompts", file=sys.stderr)

        def objective(skip: SkipLayers) -> dict:
            return timed_pass(model, prompts, "self_spec", dict(options(ThresholdState()), skip_layers=skip))

        spent = time.perf_counter() - start
        remaining = args.time_budget - spent
        if remaining < baseline["pass_seconds"]:
            raise space.SpaceError(
                f"--time_budget {args.time_budget:g}s is too small to evaluate one skip set: loading and the AR "
                f"baseline took {spent:.1f}s and one evaluation takes about {baseline['pass_seconds']:.1f}s; "
                f"raise it to at least {spent + 2 * baseline['pass_seconds'] + 1:.0f}s")
        result = search(num_layers, objective, remaining, n_trials=args.n_trials, log=log,
                        probes=probes_for(model, output, key), seed=args.seed,
                        first_trial_seconds=baseline["pass_seconds"], progress=args.progress, settings=settings)

        entries = load_skip_file(output) if output.is_file() else {}
        entries[key] = result.best
        save_skip_file(output, entries)
        return dict(key=key, num_layers=num_layers, best=result.best.to_dict(),
                    tokens_per_second=round(result.best_value, 2),
                    ar_tokens_per_second=round(baseline["tokens_per_second"], 2),
                    speedup=round(result.best_value / baseline["tokens_per_second"], 3),
                    skipped_fraction=round(result.best.fraction(num_layers), 3),
                    trials=len(result.trials), new_trials=result.new_trials, output=str(output), log=str(log))


def search_settings(args: SearchArgs, model, prompts: list) -> dict:
    """What the measured tokens/s depend on, by flag name (the trial log's settings file). Not in it: the
    budget, --n_trials and --seed (they choose which points are measured, not how), --output and --key."""
    device = model.get_input_embeddings().weight.device
    digest = hashlib.sha256(b"".join(ids.cpu().numpy().tobytes() + b"|" for ids in prompts)).hexdigest()[:16]
    return dict(llm_dir=args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=str(device),
                prompts=f"{len(prompts)} prompts, sha256 {digest}", chat=args.chat,
                max_new_tokens=args.max_new_tokens, max_draft=args.max_draft, draft_threshold=args.draft_threshold,
                hardware=device_name(device)["name"], torch=torch.__version__)


def load_prompts(path: str, tokenizer, chat: bool, device) -> list:
    """The calibration prompts as `[1, n]` id tensors (in the chat template with `chat`)."""
    try:
        texts = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise space.SpaceError(f"cannot read calibration prompts --prompts {path!r}: {error}") from error
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise space.SpaceError(f"--prompts {path!r} must be a non-empty JSON list of non-empty strings")
    if chat and tokenizer.chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    return [tokenizer(t, return_tensors="pt").input_ids.to(device) for t in texts]


def warm_up(model, prompt, options: dict) -> None:
    """Untimed short decodes of AR and of self_spec (skipping nothing): first-call costs are paid here."""
    space.decode(model, prompt, "ar", max_new_tokens=4, eos_token_id=[])
    skip_nothing = SkipLayers((), (), model.config.num_hidden_layers).to_dict()
    space.decode(model, prompt, "self_spec", **dict(options, max_new_tokens=4, skip_layers=skip_nothing))


def timed_pass(model, prompts, method: str, options: dict) -> dict:
    """Decode every prompt once; tokens/s over the whole pass (one token count for every method)."""
    tokens = drafted = accepted = 0
    seconds = 0.0
    for ids in prompts:
        result, elapsed = timed_decode(model, ids, method, options)
        seconds += elapsed
        tokens += len(result.tokens)
        drafted += sum(getattr(result.stats, "drafted_per_step", []))
        accepted += sum(result.stats.accepted_per_step)
    record = {"tokens_per_second": round(tokens / seconds, 4)}
    if drafted:
        record["acceptance"] = round(accepted / drafted, 4)
    return record | {"pass_seconds": round(seconds, 4)}


def probes_for(model, output: Path, key: str) -> list[SkipLayers]:
    """Warm starts: this model's entry in `output` if any, and attention skipped in the upper half."""
    num_layers = model.config.num_hidden_layers
    probes = []
    if output.is_file():
        entry = load_skip_file(output).get(key)
        if entry is not None and entry.num_layers in (None, num_layers) and \
                all(i < num_layers for i in entry.attention + entry.mlp):
            probes.append(entry)
    probes.append(SkipLayers(tuple(range(num_layers // 2, num_layers - 1)), (), num_layers))
    return probes

