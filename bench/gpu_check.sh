#!/usr/bin/env bash
# GPU check (issues 9, 16): fp16/bf16 parity with fp32 and throughput of M3Encoder and of the cross-encoder
# Reranker on CUDA, full-size checkpoints (the reranker is made from the encoder's body in seconds).
# Needs a CUDA machine with torch + transformers + tokenizers + safetensors installed (no Milvus needed).
# Usage: bash bench/gpu_check.sh [OUT_DIR]   -> OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.cache/gpu-check}}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${GPU_CHECK_TIMEOUT:-420}" "$PY" bench/gpu_check.py --model-dir "${MODEL_DIR:-/tmp/mee-full}" --seconds "${SECONDS_PER_DTYPE:-12}" \
  --reranker-dir "${RERANKER_DIR:-/tmp/mee-full-reranker}" \
  --markdown "$out/gpu_check.md" --json "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
