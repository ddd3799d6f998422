#!/usr/bin/env bash
# SAR-SFT launcher. The recipe is a config file (CONFIG, default the published SPACE recipe in
# configs/sft/llama2_7b.yaml: LLaMA-2-7B, alpaca_gpt4_en + lima, full fine-tuning, lr 5e-5 cosine,
# 2 epochs, batch 2 x accumulation 2 on 8 GPUs, cutoff 2048, bf16, k=5, mask_id 32002, ZeRO-2);
# the variables below only say where things are and how to launch. Flags after the script go to
# scripts/train_sft.py after the config file, so they change the recipe.
#
#   MODEL=/models/Llama-2-7b-hf bash run_sft_multi_node.sh                 # one node, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_sft_multi_node.sh   # then NODE_RANK=1 on the other node
#   HOSTFILE=hostfile bash run_sft_multi_node.sh                           # DeepSpeed launches every node over ssh
#   LAUNCHER=accelerate bash run_sft_multi_node.sh                         # accelerate launch, configs/accelerate
#   bash run_sft_multi_node.sh --finetuning_type lora --lora_rank 32       # any train_sft.py / TrainingArguments flag
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

CONFIG="${CONFIG:-configs/sft/llama2_7b.yaml}"
MODEL="${MODEL:-}"                          # empty: the config's model_name_or_path
OUTPUT_DIR="${OUTPUT_DIR:-output_dir/llama2-7b_$(date +%m-%d-%H-%M)}"
DATASET_DIR="${DATASET_DIR:-data}"
DS_CONFIG="${DS_CONFIG:-configs/deepspeed/zero2.json}"
ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-configs/accelerate/deepspeed_zero2_8gpu.yaml}"
LAUNCHER="${LAUNCHER:-deepspeed}"          # deepspeed | accelerate
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
HOSTFILE="${HOSTFILE:-}"
PYTHON="${PYTHON:-python}"

train_args=("$CONFIG" --dataset_dir "$DATASET_DIR" --output_dir "$OUTPUT_DIR")
if [ -n "$MODEL" ]; then
    train_args+=(--model_name_or_path "$MODEL")
fi

case "$LAUNCHER" in
    deepspeed)
        if [ -n "$HOSTFILE" ]; then
            launch=(deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        elif [ "$NNODES" -gt 1 ]; then
            launch=(deepspeed --no_ssh --num_nodes "$NNODES" --node_rank "$NODE_RANK" --num_gpus "$NPROC_PER_NODE"
                    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
        else
            launch=(deepspeed --num_gpus "$NPROC_PER_NODE" --master_port "$MASTER_PORT")
        fi
        train_args+=(--deepspeed "$DS_CONFIG")
        ;;
    accelerate)
        launch=("$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG"
                --num_machines "$NNODES" --machine_rank "$NODE_RANK" --num_processes "$((NPROC_PER_NODE * NNODES))"
                --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT")
        ;;
    *)
        echo "error: LAUNCHER must be deepspeed or accelerate (got $LAUNCHER)" >&2
        exit 2
        ;;
esac

command=("${launch[@]}" scripts/train_sft.py "${train_args[@]}" "$@")
echo "+ ${command[*]}"
exec "${command[@]}"
