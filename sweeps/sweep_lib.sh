# Shared by sweeps/reproduce_cpu.sh and sweeps/reproduce_gpu.sh (sourced; needs OUT and PY set).
# ONLY="fish pst ..." runs just those sweeps (shells with disjoint lists can share a machine);
# EXTRA="trainer.num_threads=1" is appended to every command.
ONLY=${ONLY:-}
EXTRA=${EXTRA:-}

sweep() {  # sweep <dir name> <overrides...>
  local name="$1" dir="$OUT/$1"; shift
  if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then return; fi
  if [[ -f "$dir/report.md" ]]; then echo "== $dir: done, skipped"; return; fi
  echo "== $dir: $*"
  # a sweep with a failed job exits 1 after writing its report; the others still run
  "$PY" run.py -m "$@" $EXTRA hydra.sweep.dir="$dir" || echo "!! $dir: a job did not complete (see $dir/report.md)"
}

sweep_each() {  # sweep_each <dir name> <overrides...>: each job alone in a fresh process, one at a time
  # (memory and time figures that the report puts side by side: python -m sparse_ft.jobs.each_process)
  local name="$1" dir="$OUT/$1"; shift
  if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then return; fi
  if [[ -f "$dir/report.md" ]]; then echo "== $dir: done, skipped"; return; fi
  echo "== $dir (one process per job): $*"
  "$PY" -m sparse_ft.jobs.each_process "$@" $EXTRA hydra.sweep.dir="$dir" || echo "!! $dir: a job did not complete (see $dir/report.md)"
}
