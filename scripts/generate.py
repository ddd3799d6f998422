"""Generate from one prompt with several methods and compare them: text, speed, tokens per step, identity.

    python scripts/generate.py --prompt "Write a function that reverses a string." --methods space,ar,hf

With no `--llm_dir` the shipped SPACE model is used (SmolLM2-135M-Instruct + the adapter in
`space/default_model/`); with `--llm_dir smollm2` (the plain base) untrained mask tokens are added
for `space` (output stays identical to AR, but few drafts are accepted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import space  # noqa: E402
from space.cli import run, str2bool  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm_dir", default=None, help="HF dir, hub name or .gguf file (default: embedded SmolLM2-135M)")
    parser.add_argument("--adapter", default=None, help="peft adapter directory applied on top of --llm_dir")
    parser.add_argument("--prompt", default="Write a Python function that checks whether a number is prime.")
    parser.add_argument("--chat", type=str2bool, default=True, help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--methods", default="space,ar,hf")
    parser.add_argument("--mask_num", type=int, default=None, help="k (default: the model config, else 3)")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--use_cache", type=str2bool, default=True)
    parser.add_argument("--do_sample", type=str2bool, default=False)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--sampling_mode", default="exact", choices=["exact", "original"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in space.DECODERS:
            raise space.SpaceError(f"unknown method {method!r} in --methods; available: {sorted(space.DECODERS)}")
    model, tokenizer = space.load_model(args.llm_dir, adapter=args.adapter, dtype=args.dtype, device=args.device)
    if "space" in methods and space.read_mask_spec(model.config) is None and args.llm_dir in (None, "smollm2"):
        space.add_mask_tokens(model, tokenizer, mask_num=args.mask_num or 3)
        print("note: the embedded model has no trained mask tokens; untrained ones were added "
              "(output is identical to AR, but few drafts are accepted)", file=sys.stderr)
    text = args.prompt
    if args.chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    input_ids = tokenizer(text, return_tensors="pt").input_ids
    options = dict(
        max_new_tokens=args.max_new_tokens, use_cache=args.use_cache, do_sample=args.do_sample,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    if args.mask_num is not None:
        options["mask_num"] = args.mask_num
    if "space" in methods:
        options["sampling_mode"] = args.sampling_mode

    results = {}
    for method in methods:
        space.decode(model, input_ids, method, **dict(options, max_new_tokens=4))  # warm-up
        start = time.perf_counter()
        result = space.decode(model, input_ids, method, **options)
        seconds = time.perf_counter() - start
        results[method] = dict(
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

    for name, result in results.items():
        print(f"=== {name}: {len(result['tokens'])} tokens in {result['seconds']} s "
              f"({result['tokens_per_second']} tok/s, {result['mean_tokens_per_step']} tokens/step"
              + (f", identical to AR: {result['identical_to_ar']}" if "identical_to_ar" in result else "") + ")")
        print(result["text"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    run(main)
