#!/usr/bin/env bash
# The GPU check (issue 21): on a one-GPU machine whose Python has torch and transformers, in under
# 8 minutes: the quickstart on CUDA with energy=nvml and energy=nvidia_smi side by side; dense vs
# FISH 0.5% step time and max_memory_allocated on MiniLM (bf16 autocast off and on); dense vs READ
# vs LoRA training memory on T5-base shapes. Prints one JSON (also OUT/gpu_check.json).
#   bash scripts/gpu_prepare.sh            (first, on a CPU machine with the project installed)
#   bash scripts/gpu_check.sh [--dry-run] [OUT]
# --dry-run: the same jobs on CPU with tiny models and 2 steps (tests/telemetry/test_measurement.py runs it).
# Run it from the checkout's root; the wheels come from $GPU_BUNDLE (default dist/gpu_bundle) and are
# unpacked into OUT/site only for the modules this Python lacks.
set -euo pipefail
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
OUT=${1:-outputs/gpu_check}
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-dist/gpu_bundle}
OUT=$(mkdir -p "$OUT" && cd "$OUT" && pwd)
if [[ -d "$BUNDLE" ]]; then
  "$PY" scripts/gpu_bundle.py install "$BUNDLE" "$OUT/site"
fi
export PYTHONPATH="$PWD:$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
exec timeout 470 "$PY" -m sparse_ft.bench.gpu_check --out "$OUT" "${DRY[@]}" ${GPU_CHECK_ARGS:-}
