"""Find the skip set of self-speculative decoding for a model: Bayesian optimisation of measured tokens/s.

Each trial decodes every calibration prompt greedily with `self_spec` (`--max_new_tokens`, no early
stop, γ carried from prompt to prompt) and scores tokens/s; `space.eval.skip_search` proposes the next skip set.
Trials go to a JSONL log as they finish, so the same command resumes an interrupted search. The best
set is written into `--output` (the original `skip_layers.json` format; other entries are kept).

    python scripts/search_skip_layers.py --llm_dir path/to/model --time_budget 3600
    python scripts/eval_infer.py --llm_dir path/to/model --methods self_spec,ar --skip_layers configs/self_spec/skip_layers.json

The optimum depends on the hardware and software stack (spec §8.3): search on the machine you will
decode on, with the dtype and device you will use.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run, str2bool  # noqa: E402
from space.decoding.threshold import ThresholdState  # noqa: E402
from space.eval.harness import synchronize  # noqa: E402
from space.eval.skip_search import search  # noqa: E402
from space.skip_layers import SkipLayers, check_skippable, load_skip_file, model_key, save_skip_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = ROOT / "configs" / "self_spec" / "calibration_prompts.json"
DEFAULT_OUTPUT = ROOT / "configs" / "self_spec" / "skip_layers.json"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm_dir", default=None, help="HF dir, hub name or .gguf file (default: embedded SmolLM2-135M)")
    parser.add_argument("--adapter", default=None, help="peft adapter directory applied on top of --llm_dir")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="JSON list of calibration prompt strings")
    parser.add_argument("--chat", type=str2bool, default=False, help="wrap each prompt in the tokenizer's chat template")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="tokens per prompt per trial (reference: 32)")
    parser.add_argument("--time_budget", type=float, default=3600.0, help="seconds for the whole search")
    parser.add_argument("--n_trials", type=int, default=None, help="new trials at most (default: until the budget ends)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="skip_layers.json to write the best set into")
    parser.add_argument("--key", default=None, help="entry name in --output (default: the model's name)")
    parser.add_argument("--log", default=None, help="JSONL trial log (default: outputs/self_spec/search_<key>.jsonl)")
    parser.add_argument("--max_draft", type=int, default=8, help="K_max of the decoder during the search")
    parser.add_argument("--draft_threshold", type=float, default=0.8, help="initial γ during the search")
    parser.add_argument("--seed", type=int, default=1, help="seed of the optimiser")
    parser.add_argument("--progress", type=str2bool, default=True)
    return parser.parse_args(argv)


def load_prompts(path: str, tokenizer, chat: bool, device) -> list:
    try:
        texts = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise space.SpaceError(f"cannot read calibration prompts {path!r}: {error}") from error
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise space.SpaceError(f"--prompts {path!r} must be a non-empty JSON list of non-empty strings")
    if chat and tokenizer.chat_template:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    return [tokenizer(t, return_tensors="pt").input_ids.to(device) for t in texts]


def timed_pass(model, prompts, method: str, options: dict) -> dict:
    """Decode every prompt once; tokens/s over the whole pass (one token count for every method)."""
    device = model.get_input_embeddings().weight.device
    tokens = drafted = accepted = 0
    synchronize(device)
    start = time.perf_counter()
    for ids in prompts:
        result = space.decode(model, ids, method, **options)
        tokens += len(result.tokens)
        drafted += sum(getattr(result.stats, "drafted_per_step", []))
        accepted += sum(result.stats.accepted_per_step)
    synchronize(device)
    seconds = time.perf_counter() - start
    record = {"tokens_per_second": round(tokens / seconds, 4)}
    if drafted:
        record["acceptance"] = round(accepted / drafted, 4)
    return record | {"pass_seconds": round(seconds, 4)}


def probes_for(model, output: Path, key: str) -> list[SkipLayers]:
    """Warm starts: this model's entry in --output if any, and attention skipped in the upper half."""
    num_layers = model.config.num_hidden_layers
    probes = []
    if output.is_file():
        entry = load_skip_file(output).get(key)
        if entry is not None and entry.num_layers in (None, num_layers) and \
                all(i < num_layers for i in entry.attention + entry.mlp):
            probes.append(entry)
    probes.append(SkipLayers(tuple(range(num_layers // 2, num_layers - 1)), (), num_layers))
    return probes


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.time_budget <= 0:
        raise space.SpaceError(f"--time_budget must be > 0 seconds (got {args.time_budget})")
    if args.max_new_tokens < 2:
        raise space.SpaceError("--max_new_tokens must be >= 2: with one token no draft is ever made")
    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=args.device)
    check_skippable(model)
    prompts = load_prompts(args.prompts, tokenizer, args.chat, model.device)
    key = args.key or model_key(model)
    output = Path(args.output)
    log = Path(args.log) if args.log else Path("outputs") / "self_spec" / f"search_{key}.jsonl"
    num_layers = model.config.num_hidden_layers
    common = dict(max_new_tokens=args.max_new_tokens, eos_token_id=[])  # always the same token count

    def options(state=None) -> dict:
        return dict(common, max_draft=args.max_draft, draft_threshold=args.draft_threshold, threshold_state=state)

    # warm-up (first-call costs), then the AR baseline: the speedup reference and the cost of one trial
    warm = SkipLayers((), (), num_layers).to_dict()
    space.decode(model, prompts[0], "ar", **dict(common, max_new_tokens=4))
    space.decode(model, prompts[0], "self_spec", **dict(options(), max_new_tokens=4, skip_layers=warm))
    baseline = timed_pass(model, prompts, "ar", common)
    print(f"AR baseline: {baseline['tokens_per_second']:.2f} tokens/s on {len(prompts)} prompts", file=sys.stderr)

    def objective(skip: SkipLayers) -> dict:
        return timed_pass(model, prompts, "self_spec", dict(options(ThresholdState()), skip_layers=skip))

    spent = time.perf_counter() - start
    remaining = args.time_budget - spent
    if remaining < baseline["pass_seconds"]:
        raise space.SpaceError(
            f"--time_budget {args.time_budget:g}s is too small to evaluate one skip set: loading and the AR baseline "
            f"took {spent:.1f}s and one evaluation takes about {baseline['pass_seconds']:.1f}s; "
            f"raise it to at least {spent + 2 * baseline['pass_seconds'] + 1:.0f}s")
    result = search(num_layers, objective, remaining, n_trials=args.n_trials, log=log,
                    probes=probes_for(model, output, key), seed=args.seed,
                    first_trial_seconds=baseline["pass_seconds"], progress=args.progress)

    entries = load_skip_file(output) if output.is_file() else {}
    entries[key] = result.best
    save_skip_file(output, entries)
    summary = dict(key=key, num_layers=num_layers, best=result.best.to_dict(),
                   tokens_per_second=round(result.best_value, 2),
                   ar_tokens_per_second=round(baseline["tokens_per_second"], 2),
                   speedup=round(result.best_value / baseline["tokens_per_second"], 3),
                   skipped_fraction=round(result.best.fraction(num_layers), 3),
                   trials=len(result.trials), new_trials=result.new_trials, output=str(output), log=str(log))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run(main)
