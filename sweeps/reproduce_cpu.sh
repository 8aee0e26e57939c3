#!/usr/bin/env bash
# The CPU reproduction: every sweep behind docs/reproduction/README.md, then the report.
#   bash sweeps/reproduce_cpu.sh [OUT]         (OUT defaults to outputs/reproduce; ~2-2.5 h on 2 cores, ~15 GB RAM for T5-large dense)
#   make reproduce                             (the same)
# Offline: the bundled pretrained MiniLM, the real MRPC files in ../shared/data/glue (GLUE_DIR to
# point elsewhere), the generated NLI task, random-init T5-base shapes. A sweep whose directory
# already holds a report.md is skipped, so an interrupted reproduction continues where it stopped
# (a job interrupted inside a sweep resumes from its checkpoint: trainer.resume=auto).
set -euo pipefail
OUT=${1:-outputs/reproduce}
GLUE=${GLUE_DIR:-../shared/data/glue}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-disabled}

source "$(dirname "$0")/sweep_lib.sh"

sweep essential   +sweep=reproduce_cpu_essential task.data_dir="$GLUE"
sweep ere         +sweep=reproduce_cpu_ere source="$OUT/essential/0" method.rank_prior=4,8,16,64 method.bits=2,4,8  # job 0: s = 0, dense
sweep ere_bitq    +sweep=reproduce_cpu_ere source="$OUT/essential/0" method=bitq method.bits=2,4,8
sweep ere_lra     +sweep=reproduce_cpu_ere source="$OUT/essential/0" method=lra method.rank=4,16,64
sweep fish        +sweep=reproduce_cpu_fish
sweep dense       +sweep=reproduce_cpu_dense
sweep fish_samples +sweep=reproduce_cpu_fish_samples
sweep pst         +sweep=reproduce_cpu_pst
sweep costs       +sweep=reproduce_cpu_costs
sweep read        +sweep=reproduce_cpu_read task.data_dir="$GLUE"
# one fresh process per job, one at a time: a multirun process keeps earlier jobs' memory resident
# and jobs side by side share the cores, so memory and time compare only between lone fresh processes
sweep_each memory +sweep=reproduce_cpu_memory task.data_dir="$GLUE"
sweep_each memory_sizes +sweep=memory_vs_size task.data_dir="$GLUE"
sweep imp         +sweep=reproduce_cpu_imp
sweep fish_warmup +sweep=reproduce_cpu_fish_warmup

if [[ -z "$ONLY" ]]; then "$PY" -m sparse_ft.report "$OUT" --reproduce --out docs/reproduction; fi
