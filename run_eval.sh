#!/usr/bin/env bash
# The main job: SPACE against AR and HF prompt lookup on the first 5 HumanEval problems, 128 new tokens, with the
# embedded default model on the CPU, in a few minutes; prints the table (speedup, tokens/step, identity, pass@1)
# and writes outputs/eval/human_eval/. It only forwards flags to scripts/eval_infer.py: the job's own three come
# first, yours after them win, and every other flag keeps its default (`--help` lists them all).
#
#   bash run_eval.sh
#   bash run_eval.sh --num_samples 164 --max_new_tokens 256 --methods space,ar,hf,prompt_lookup
#   bash run_eval.sh --llm_dir /models/vicuna-7b-space --mask_id 32002 --mask_num 5 --prompt_style original \
#       --dtype float16 --device cuda
#
# SPACE_PYTHON: an interpreter that already has the project installed; otherwise .venv is set up first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON="${SPACE_PYTHON:-$(bash scripts/setup_env.sh)}"
args=(scripts/eval_infer.py --methods space,ar,prompt_lookup --num_samples 5 --max_new_tokens 128 "$@")
echo "+ $PYTHON ${args[*]}" >&2
exec "$PYTHON" "${args[@]}"
