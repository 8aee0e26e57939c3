#!/usr/bin/env bash
# The CPU reproduction: every sweep behind docs/reproduction/README.md, then the report.
#   bash sweeps/reproduce_cpu.sh [OUT]         (OUT defaults to outputs/reproduce; ~15 GB RAM for T5-large dense in memory_sizes)
#   make reproduce                             (the same)
# Offline: the bundled pretrained MiniLM on the real GLUE SST-2 files in ../shared/data/glue (GLUE_DIR to point
# elsewhere; task.split_scheme=read: validation carved from train for the lr grid, the official dev set reported),
# 3 seeds and a 2-value lr grid per method; random-init T5-base shapes on MRPC inputs for memory; the generated NLI
# task only for the costs table and FISH's head warm-up look. Every training job runs on one thread; the two halves
# below run side by side (JOBS=2, the default; JOBS=1 runs them one after the other), then the memory jobs run
# alone, one process per method. A sweep whose directory already holds a report.md is skipped, so an interrupted
# reproduction continues where it stopped (a job interrupted inside a sweep resumes from its checkpoint:
# trainer.resume=auto). The sweep names are those of the earlier MRPC / NLI reproduction: start from an OUT
# that holds none of its directories (they would count as done).
# Wall time, estimated from one measured SST-2 run (dense MiniLM, 2,000 training rows, 1 epoch, batch 32, one
# thread, this session's loaded 2-core machine): 188 s wall (train 132 s, eval of 1,000 + 872 rows 47 s), 68 s of
# CPU. The reproduction is ~238 such runs (228 training runs; Diff Pruning ~2x, IMP 3 rounds; 63 compress jobs
# ~0.3x each): with two jobs side by side ~2.5-3 h on an idle 2-core machine (one core per job,
# ~70-90 s a run), up to ~6.5 h at the measured load (188 s a run), plus ~10 min of memory jobs.
set -euo pipefail
OUT=${1:-outputs/reproduce}
GLUE=${GLUE_DIR:-../shared/data/glue}
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python)}
JOBS=${JOBS:-2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-disabled} OMP_NUM_THREADS=1

source "$(dirname "$0")/sweep_lib.sh"
mkdir -p "$OUT"
START=$(date +%s)

half_a() {  # dense, FISH and its baselines, ERE (compressing dense's jobs 0-2: lr 5e-5, seeds 1-3), IMP
sweep dense        +sweep=reproduce_cpu_dense task.data_dir="$GLUE"
sweep fish         +sweep=reproduce_cpu_fish task.data_dir="$GLUE"
sweep fish_samples +sweep=reproduce_cpu_fish_samples task.data_dir="$GLUE"
sweep fish_baselines +sweep=reproduce_cpu_fish_baselines task.data_dir="$GLUE"
# ERE and its baselines compress each seed's dense fine-tune (dense/0,1,2: lr 5e-5, seeds 1, 2, 3): a drop
# "within 1 point" is decided over the three sources (report.verdicts.decide_mean)
for src in 0 1 2; do
  tag=$([[ $src == 0 ]] && echo "" || echo "_seed$((src + 1))")
  sweep ere$tag      +sweep=reproduce_cpu_ere source="$OUT/dense/$src" method.rank_prior=0,4,8,16,64 method.bits=2,4,8  # r = 0: the rank-0 control
  sweep ere_bitq$tag +sweep=reproduce_cpu_ere source="$OUT/dense/$src" method=bitq method.bits=2,4,8
  sweep ere_lra$tag  +sweep=reproduce_cpu_ere source="$OUT/dense/$src" method=lra method.rank=4,16,64
done
sweep imp          +sweep=reproduce_cpu_imp task.data_dir="$GLUE"
sweep fish_warmup  +sweep=reproduce_cpu_fish_warmup trainer.num_threads=1
}

half_b() {  # PST, the OMP curve, READ and the PETL methods, the rest of the cost table
sweep pst          +sweep=reproduce_cpu_pst task.data_dir="$GLUE"
sweep essential    +sweep=reproduce_cpu_essential task.data_dir="$GLUE"
sweep essential_nm +sweep=reproduce_cpu_essential_nm task.data_dir="$GLUE"
sweep read         +sweep=reproduce_cpu_read task.data_dir="$GLUE"
sweep costs        +sweep=reproduce_cpu_costs trainer.num_threads=1
}

if [[ "$JOBS" == 2 ]]; then
  half_a 2>&1 | sed -u 's/^/[a] /' &
  half_b 2>&1 | sed -u 's/^/[b] /'
  wait
else
  half_a
  half_b
fi
# alone, one process per method: a multirun process keeps earlier jobs' memory resident, and a job beside
# another measures both; CPU peaks compare only between fresh processes run alone
sweep_each memory       +sweep=reproduce_cpu_memory task.data_dir="$GLUE"
sweep_each memory_sizes +sweep=memory_vs_size task.data_dir="$GLUE"

echo "$START $(date +%s)" >> "$OUT/reproduce_wall.txt"  # the report's provenance sums these
if [[ -z "$ONLY" ]]; then "$PY" -m sparse_ft.report "$OUT" --reproduce --out docs/reproduction; fi
