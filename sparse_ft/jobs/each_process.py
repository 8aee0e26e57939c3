"""A sweep whose jobs each run alone in a fresh process, one after another: the launcher for
memory and time figures that are put side by side.

    python -m sparse_ft.jobs.each_process +sweep=reproduce_cpu_memory task.data_dir=../shared/data/glue
    python -m sparse_ft.jobs.each_process method=dense,read model=t5_base_shapes hydra.sweep.dir=outputs/mem

Takes the arguments of `python run.py -m`. The jobs are those Hydra's BasicSweeper would launch
(`sparse_ft.config.sweep_plan`, same order and numbering); job i runs as `python run.py <its overrides>
hydra.run.dir=<sweep dir>/<i> measurement.alone=true` and must finish before job i+1 starts. Why
not Hydra: its basic launcher runs every job in one process (memory an earlier job freed but the
allocator kept, and cached kernels, end up in later jobs' peaks), and `submitit_local` / `joblib`
run jobs side by side (they share cores: time figures mean nothing, and a 2-core machine thrashes).
`measurement.alone=true` makes each job refuse a launcher that would break that, and every job's
summary.json records what it saw (`measurement.process`, `measurement.concurrent_jobs`).

A completed job is not run again (its run directory holds a completed summary.json: the run
skips itself), so an interrupted sweep goes on where it stopped. When every job has run, the
sweep's report is written as after `run.py -m` (results.csv, report.md, plots); the exit status
is 1 when a job did not complete, 2 when the arguments do not compose.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..telemetry.measurement import LAUNCHER_ENV

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


def plan_jobs(overrides: list[str]) -> tuple[list[list[str]], Path]:
    """Each job's overrides (Hydra's order) and the sweep directory (`hydra.sweep.dir`, resolved once)."""
    from omegaconf import OmegaConf

    from ..config.sweep_plan import Planner

    with Planner(overrides) as planner:
        jobs = planner.plan().jobs
        sweep_dir = Path(str(OmegaConf.select(planner.master, "hydra.sweep.dir"))).resolve()  # as run.py -m would, from here
    return jobs, sweep_dir


def job_command(python: str, job: list[str], run_dir: Path) -> list[str]:
    # the sweep file's own grid (hydra.sweeper.params) is ignored by a single run: the job's
    # overrides already hold its values
    return [python, str(REPO / "run.py"), *job, f"hydra.run.dir={run_dir}", "measurement.alone=true"]


def run_sweep(jobs: list[list[str]], sweep_dir: Path, python: str = sys.executable, dry_run: bool = False, report: bool = True) -> int:
    if not dry_run:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, LAUNCHER_ENV: "each_process"}
    failed = []
    print(f"{len(jobs)} job(s), one process each, one at a time, in {sweep_dir}", flush=True)
    for i, job in enumerate(jobs):
        cmd = job_command(python, job, sweep_dir / str(i))
        print(f"#{i}: {' '.join(cmd[2:])}", flush=True)
        if dry_run:
            continue
        code = subprocess.run(cmd, env=env).returncode  # from this directory, as `run.py -m` would run (relative data paths)
        if code != 0:
            failed.append(i)
            print(f"!! job {i} exited {code} (its summary.json says why)", flush=True)
    if dry_run:
        return 0
    if report:
        from ..report import NoRunsError, generate_report

        try:
            generate_report([sweep_dir])
        except NoRunsError as err:
            print(f"report: {err}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.jobs.each_process",
                                     description="Run a sweep's jobs one at a time, each in a fresh process (comparable memory and time figures).")
    parser.add_argument("overrides", nargs="*", help="what you would give `run.py -m` (sweep files, key=a,b grids, hydra.sweep.dir=...)")
    parser.add_argument("--dry-run", action="store_true", help="list the commands, run nothing")
    parser.add_argument("--no-report", action="store_true", help="do not write the sweep's report at the end")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs each job (default: this one)")
    args = parser.parse_args([a for a in argv if a not in ("-m", "--multirun")])
    try:
        jobs, sweep_dir = plan_jobs(args.overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's composition / override errors: say what, exit 2
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return run_sweep(jobs, sweep_dir, args.python, args.dry_run, not args.no_report)


if __name__ == "__main__":
    raise SystemExit(main())
