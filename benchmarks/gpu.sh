#!/usr/bin/env bash
# The GPU check, for a session that is lent a device (never required), in three parts:
#   1. benchmarks/gpu_engine.sh, where a `make repro` tree is present: `selora train / sample /
#      evaluate` of the embedded default on CUDA with fp16 autocast (every method, the no-adapter base);
# then SD 1.5's architecture (random weights, no download) at the paper's 224 px / batch 8, fp16:
#   2. benchmarks/train.py --sd15: steps/s and peak CUDA memory per method through the engine's step,
#      and the engine vs a diffusers-example-style peft LoRA loop (paper Table 7's memory column);
#   3. benchmarks/sd15.py --device cuda: every method interleaved on the same batches, SeLoRA's
#      test-step cost and SeLoRA / LoRA time at equal ranks (Table 8), peak CUDA memory per step,
#      and a profile of one test step against a plain one (test_step_profile: host- or GPU-bound).
# About 8 minutes of device time on an H100/H200-class GPU; each part has its own time limit.
#   bash benchmarks/gpu.sh [OUT_DIR]       (default results/benchmarks/gpu)
set -euo pipefail
out=${1:-results/benchmarks/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
if [ -e models/tiny-sd/model_index.json ]; then
    timeout 240 bash benchmarks/gpu_engine.sh "$out" \
        || echo "gpu_engine.sh failed or timed out (rc $?)" | tee -a "$out/gpu.txt"
fi
timeout 150 $py benchmarks/train.py --sd15 --gpu-steps 20 --out "$out/train_sd15.json" \
    || echo "train.py --sd15 failed or timed out (rc $?)" | tee -a "$out/gpu.txt"
timeout 150 $py benchmarks/sd15.py --device cuda --precision fp16 --latent 28 --batch-size 8 \
    --rounds 6 --pairs 4 --threads 4 --skip engine sampling inception --profile \
    --out "$out/sd15.json" \
    || echo "sd15.py --device cuda failed or timed out (rc $?)" | tee -a "$out/gpu.txt"
