#!/usr/bin/env bash
# The GPU check of issue #16, for a session that is lent a device (never required): SD 1.5's
# architecture (random weights, no download) at the paper's 224 px / batch 8, fp16 autocast.
#   1. benchmarks/train.py --sd15: steps/s and peak CUDA memory per method through the engine's step,
#      and the engine vs a diffusers-example-style peft LoRA loop (paper Table 7's memory column);
#   2. benchmarks/sd15.py --device cuda: every method interleaved on the same batches, SeLoRA's
#      test-step cost and SeLoRA / LoRA time at equal ranks (Table 8), peak CUDA memory per step.
# About 4 minutes of device time on an H100/H200-class GPU; each part has its own time limit.
#   bash benchmarks/gpu.sh [OUT_DIR]       (default results/benchmarks/gpu)
set -euo pipefail
out=${1:-results/benchmarks/gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 150 python benchmarks/train.py --sd15 --gpu-steps 20 --out "$out/train_sd15.json" \
    || echo "train.py --sd15 failed or timed out (rc $?)" | tee -a "$out/gpu.txt"
timeout 150 python benchmarks/sd15.py --device cuda --precision fp16 --latent 28 --batch-size 8 \
    --rounds 6 --pairs 4 --threads 4 --skip engine sampling inception --out "$out/sd15.json" \
    || echo "sd15.py --device cuda failed or timed out (rc $?)" | tee -a "$out/gpu.txt"
