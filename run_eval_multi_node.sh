#!/usr/bin/env bash
# Data-parallel evaluation launcher, the counterpart of run_sft_multi_node.sh: one rank per GPU, each answering every
# N-th prompt with every method on its own device; rank 0 merges the answers into the usual outputs
# (space.eval.ranks). It only launches: every flag after the script goes to SCRIPT unchanged.
#
#   bash run_eval_multi_node.sh --llm_dir /models/vicuna-7b-space --dataset human_eval --device cuda --dtype float16
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_eval_multi_node.sh ...   # then NODE_RANK=1 on the other node
#   SCRIPT=scripts/eval_quality.py bash run_eval_multi_node.sh --dataset humaneval-x-go --device cuda
#   LAUNCHER=accelerate bash run_eval_multi_node.sh ...                          # accelerate launch instead of torchrun
#   NPROC_PER_NODE=2 bash run_eval_multi_node.sh --device cpu ...                # CPU ranks share the cores
#
# With several nodes, give every node the same --output_dir on a shared file system, or only rank 0's node keeps
# the merged outputs (each rank's part file stays on its own node until rank 0 has merged it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

SCRIPT="${SCRIPT:-scripts/eval_infer.py}"  # or scripts/eval_quality.py
LAUNCHER="${LAUNCHER:-torchrun}"          # torchrun | accelerate
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
PYTHON="${PYTHON:-python}"

case "$LAUNCHER" in
    torchrun)
        launch=("$PYTHON" -m torch.distributed.run --nnodes "$NNODES" --node_rank "$NODE_RANK"
                --nproc_per_node "$NPROC_PER_NODE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        ;;
    accelerate)
        launch=("$PYTHON" -m accelerate.commands.launch --multi_gpu --num_machines "$NNODES" --machine_rank "$NODE_RANK"
                --num_processes "$((NPROC_PER_NODE * NNODES))" --main_process_ip "$MASTER_ADDR"
                --main_process_port "$MASTER_PORT")
        ;;
    *)
        echo "error: LAUNCHER must be torchrun or accelerate (got $LAUNCHER)" >&2
        exit 2
        ;;
esac

command=("${launch[@]}" "$SCRIPT" "$@")
echo "+ ${command[*]}" >&2
exec "${command[@]}"
