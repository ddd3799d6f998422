#!/usr/bin/env bash
# Issue 32's GPU checks in one call that fits 8 minutes on one GPU (H100 or H200):
#   1. the CUDA subset of the tests: every batched row against its batch-1 output (fp32), SPACE's tree, gated
#      adapters with a sampler head, continuous batching, and every method on a bf16 model;
#   2. the GPU row-cost curve of the shipped model (bf16 and fp32; scripts/bench_roofline.py), stored where
#      SPACE's tree reads the device's price of rows (space/configs/cost_curves/curves.json: commit it);
#   3. AR and the tree at batch sizes 1 to 64 on the first 64 HumanEval prompts (scripts/bench_batch.py).
# Results go to $OUT when set (the device tool), else docs/results/gpu/batch/.
#
#   bash scripts/gpu_check.sh            # on the GPU machine (python3 with torch and the project's requirements)
#   bash scripts/gpu_check.sh --dry-run  # the same steps on the CPU at toy sizes, nothing stored (CI runs this)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${SPACE_PYTHON:-python3}"
if [[ "${1:-}" == "--dry-run" ]]; then
    device=cpu; out="${2:-$(mktemp -d)}"
    tests=(tests/test_batch.py -k "case-00 or case-01 or gated or continuous")
    roofline=(--dtypes float32 --rows 1,2,4 --repeats 1 --max_new_tokens 4 --context_tokens 16)
    bench=(--num_samples 3 --batch_sizes 1,2 --max_new_tokens 4 --methods ar,tree)
else
    device=cuda; out="${OUT:-docs/results/gpu/batch}"
    "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run')"
    tests=(tests/test_batch.py tests/test_greedy_identity.py tests/test_half_precision.py -k "not distribution")
    roofline=(--dtypes bfloat16,float32 --rows 1,2,4,8,16,32,48,64,96,128,192,256 --repeats 5 --store_curves true)
    bench=(--num_samples 64 --batch_sizes 1,2,4,8,16,32,64 --max_new_tokens 128 --methods ar,tree)
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1 || true
failed=()  # every step runs; the script fails at the end if one did
echo "== 1. tests on $device"
SPACE_TEST_DEVICE="$device" "$python" -m pytest -q -p no:cacheprovider -m "not slow" "${tests[@]}" \
    > "$out/tests.log" 2>&1 || failed+=(tests)
tail -n 3 "$out/tests.log"
echo "== 2. the row-cost curve on $device"
"$python" scripts/bench_roofline.py --device "$device" "${roofline[@]}" --output "$out/roofline.json" \
    > "$out/roofline.log" 2>&1 || failed+=(roofline)
grep -v "it/s" "$out/roofline.log" | tail -n 8 || true
echo "== 3. throughput against batch size on $device"
"$python" scripts/bench_batch.py --device "$device" "${bench[@]}" --output "$out/bench_batch.json" \
    > "$out/bench_batch.log" 2>&1 || failed+=(bench_batch)
grep -v "it/s" "$out/bench_batch.log" | tail -n 20 || true
if ((${#failed[@]})); then
    echo "failed: ${failed[*]} (logs in $out)"
    exit 1
fi
