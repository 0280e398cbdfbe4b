#!/usr/bin/env bash
# One complete GPU run: CUDA tests of the compute paths (Triton kernels against a float64
# reference, the graph-safe static path under sync-debug mode and replayed in a CUDA
# graph), then the side-by-side benchmark at Whisper small (batch 32) and large-v3
# (batch 16), 30 s inputs, bf16, with eager and CUDA-graphed rows.
# Usage: OUT=<dir> bash benchmarks/gpu_run.sh   (from the repository root)
# PROFILE=1 adds torch.profiler tables of the eager floor and Flexi step (small).
set -uo pipefail
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, transformers, peft, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/lora/test_kernels.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
profile=()
[ "${PROFILE:-0}" = 1 ] && profile=(--profile "$OUT/profile.txt")
python3 -m flexispeech bench --device cuda --shape small --batch 32 --audio-ctx 1500 --label-len 64 \
  --warmup 3 --reps 10 "${profile[@]}" --out "$OUT/table.md" 2>&1 | grep -v -i warn | tee "$OUT/small.log"
python3 -m flexispeech bench --device cuda --shape large-v3 --batch 16 --audio-ctx 1500 --label-len 64 \
  --warmup 2 --reps 6 --out "$OUT/table.md" 2>&1 | grep -v -i warn | tee "$OUT/large.log"
