#!/usr/bin/env bash
# SAR-SFT launcher. Defaults are the published SPACE recipe (LLaMA-2-7B, alpaca_gpt4_en + lima,
# full fine-tuning, lr 5e-5 cosine, 2 epochs, per-device batch 2 x accumulation 2 on 8 GPUs,
# cutoff 2048, bf16, k=5, mask_prob 0.5, mask_id 32002, gradient checkpointing, ZeRO-2).
# Every setting is an environment variable; extra flags for scripts/train_sft.py go after the script.
#
#   MODEL=/models/Llama-2-7b-hf bash run_sft_multi_node.sh                 # one node, 8 GPUs
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run_sft_multi_node.sh   # then NODE_RANK=1 on the other node
#   HOSTFILE=hostfile bash run_sft_multi_node.sh                           # DeepSpeed launches every node over ssh
#   LAUNCHER=accelerate bash run_sft_multi_node.sh                         # accelerate launch, configs/accelerate
#   ... --max_steps 10 --logging_steps 1                                   # any train_sft.py / TrainingArguments flag
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

MODEL="${MODEL:-/path/to/Llama-2-7b-hf}"
DATASET="${DATASET:-alpaca_gpt4_en,lima}"
DATASET_DIR="${DATASET_DIR:-data}"
TEMPLATE="${TEMPLATE:-default}"
FINETUNING_TYPE="${FINETUNING_TYPE:-full}"
OUTPUT_DIR="${OUTPUT_DIR:-output_dir/llama2-7b_$(date +%m-%d-%H-%M)}"
LEARNING_RATE="${LEARNING_RATE:-5e-5}"
LR_SCHEDULER="${LR_SCHEDULER:-cosine}"
EPOCHS="${EPOCHS:-2.0}"
BATCH_SIZE="${BATCH_SIZE:-2}"
GRAD_ACCUM="${GRAD_ACCUM:-2}"
CUTOFF_LEN="${CUTOFF_LEN:-2048}"
BF16="${BF16:-true}"
GRADIENT_CHECKPOINTING="${GRADIENT_CHECKPOINTING:-true}"
MASK_NUM="${MASK_NUM:-5}"
MASK_PROB="${MASK_PROB:-0.5}"
MASK_ID="${MASK_ID:-32002}"
MASK_DIFF="${MASK_DIFF:-false}"
MASK_RANDOM="${MASK_RANDOM:-false}"
MASK_EFFICIENT_TRAIN="${MASK_EFFICIENT_TRAIN:-false}"
MASK_LOSS_WEIGHT="${MASK_LOSS_WEIGHT:-1}"
LOGGING_STEPS="${LOGGING_STEPS:-10}"
SAVE_STRATEGY="${SAVE_STRATEGY:-epoch}"
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

train_args=(
    --stage sft --do_train
    --model_name_or_path "$MODEL"
    --dataset "$DATASET" --dataset_dir "$DATASET_DIR" --template "$TEMPLATE"
    --finetuning_type "$FINETUNING_TYPE"
    --output_dir "$OUTPUT_DIR" --overwrite_output_dir
    --per_device_train_batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACCUM"
    --lr_scheduler_type "$LR_SCHEDULER" --learning_rate "$LEARNING_RATE" --num_train_epochs "$EPOCHS"
    --logging_steps "$LOGGING_STEPS" --save_strategy "$SAVE_STRATEGY" --plot_loss
    --bf16 "$BF16" --gradient_checkpointing "$GRADIENT_CHECKPOINTING"
    --cutoff_len "$CUTOFF_LEN" --remove_unused_columns false --report_to none
    --mask_num "$MASK_NUM" --mask_prob "$MASK_PROB" --mask_diff "$MASK_DIFF"
    --mask_random "$MASK_RANDOM" --mask_efficient_train "$MASK_EFFICIENT_TRAIN" --mask_loss_weight "$MASK_LOSS_WEIGHT"
)

# MASK_ID=auto keeps the model's recorded mask id, or takes the first free id
if [ "$MASK_ID" != "auto" ]; then
    train_args+=(--mask_id "$MASK_ID")
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
