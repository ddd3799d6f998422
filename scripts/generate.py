"""Generate from one prompt with several methods and compare them: text, speed, tokens per step, identity.

    python scripts/generate.py --prompt "Write a function that reverses a string." --methods space,ar,hf
    python scripts/generate.py --stream      # print each answer as it is decoded, a step's tokens at once

With no `--llm_dir` the shipped SPACE model is used (SmolLM2-135M-Instruct + the adapter in
`space/default_model/`); with `--llm_dir smollm2` (the plain base) untrained mask tokens are added
for `space` (output stays identical to AR, but few drafts are accepted). The work is
`space.eval.compare.compare`.
"""

from __future__ import annotations

from space.cli import run
from space.eval.compare import compare, parse_compare_args


def main(argv=None) -> dict:
    args = parse_compare_args(argv, description=__doc__.split("\n\n")[0])
    results = compare(args)
    for name, result in results.items():
        print(f"=== {name}: {len(result['tokens'])} tokens in {result['seconds']} s "
              f"({result['tokens_per_second']} tok/s, {result['mean_tokens_per_step']} tokens/step, first token after "
              f"{result['first_token_seconds']} s, {result['mean_step_seconds']} s a step after it"
              + (f", identical to AR: {result['identical_to_ar']}" if "identical_to_ar" in result else "") + ")")
        if not args.stream:  # streamed: already printed as it arrived
            print(result["text"])
    return results


if __name__ == "__main__":
    run(main)
