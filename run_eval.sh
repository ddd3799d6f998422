#!/usr/bin/env bash
# Evaluate decoding methods on the same prompts and print the table (speedup, tokens/step, identity, pass@1).
# With no arguments: the embedded default model on CPU, a HumanEval subset, SPACE vs AR vs HF prompt lookup,
# in a few minutes. Every setting is an environment variable; extra flags go to scripts/eval_infer.py.
#
#   bash run_eval.sh
#   NUM_SAMPLES=164 MAX_NEW_TOKENS=256 METHODS=space,ar,hf,prompt_lookup bash run_eval.sh
#   LLM_DIR=/models/vicuna-7b-space MASK_ID=32002 MASK_NUM=5 PROMPT_STYLE=original DTYPE=float16 bash run_eval.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

DATASET="${DATASET:-human_eval}"
METHODS="${METHODS:-space,ar,prompt_lookup}"
NUM_SAMPLES="${NUM_SAMPLES:-5}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-128}"
LLM_DIR="${LLM_DIR:-}"              # empty: the embedded default model
ADAPTER="${ADAPTER:-}"
MASK_ID="${MASK_ID:-}"              # empty: from the model config
MASK_NUM="${MASK_NUM:-}"
MASK_DIFF="${MASK_DIFF:-}"
MODEL_TYPE="${MODEL_TYPE:-llama}"
PROMPT_STYLE="${PROMPT_STYLE:-auto}"
USE_CACHE="${USE_CACHE:-true}"
DO_SAMPLE="${DO_SAMPLE:-false}"
TREE="${TREE:-true}"                # SPACE's candidate tree; false: the paper's chain
SAVE_DATA="${SAVE_DATA:-true}"
WARMUP="${WARMUP:-1}"
SEED="${SEED:-0}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/eval/${DATASET}}"
# true: a run with other settings in OUTPUT_DIR has its files replaced (run_config.json, samples.jsonl, summary.*,
# the CSVs; nothing else there is touched, and a directory that holds no run is refused); false: refused
OVERWRITE="${OVERWRITE:-true}"
if [ -z "${DEVICE:-}" ]; then
    DEVICE=cpu
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; fi
fi
if [ -z "${DTYPE:-}" ]; then
    DTYPE=auto  # the fastest dtype measured to keep greedy identity on the device (space.models.AUTO_DTYPES)
fi
# SPACE_PYTHON: an interpreter that already has the project installed; otherwise set up .venv
PYTHON="${SPACE_PYTHON:-$(bash scripts/setup_env.sh)}"

args=(scripts/eval_infer.py --dataset "$DATASET" --methods "$METHODS" --num_samples "$NUM_SAMPLES"
      --max_new_tokens "$MAX_NEW_TOKENS" --model_type "$MODEL_TYPE" --prompt_style "$PROMPT_STYLE"
      --use_cache "$USE_CACHE" --do_sample "$DO_SAMPLE" --tree "$TREE" --save_data "$SAVE_DATA" --warmup "$WARMUP" --seed "$SEED"
      --device "$DEVICE" --dtype "$DTYPE" --output_dir "$OUTPUT_DIR")
[ -n "$LLM_DIR" ] && args+=(--llm_dir "$LLM_DIR")
[ -n "$ADAPTER" ] && args+=(--adapter "$ADAPTER")
[ -n "$MASK_ID" ] && args+=(--mask_id "$MASK_ID")
[ -n "$MASK_NUM" ] && args+=(--mask_num "$MASK_NUM")
[ -n "$MASK_DIFF" ] && args+=(--mask_diff "$MASK_DIFF")
[ "$OVERWRITE" = true ] && args+=(--overwrite)

echo "+ $PYTHON ${args[*]} $*" >&2
exec "$PYTHON" "${args[@]}" "$@"
