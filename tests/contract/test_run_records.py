"""Run records that cannot lie (issue 19, items 2, 3, 4, 10, 11 and two notes of 14):

- a resume compares the checkpoint's settings with the new ones and refuses naming every key
  that differs (exit 2, before anything loads) unless `trainer.resume_force=true`, which
  summary.json records; max_steps/epochs may grow, logging keys may change;
- one process per run directory: a second run on a locked directory fails at once naming the
  PID that holds it; a lock left by a dead process is taken over;
- a completed run directory is never modified: relaunched with the same settings it is skipped,
  with other ones the job exits 2 naming them;
- `python -m sparse_ft.config.sweep_plan` validates every job as run.py would;
- a command rejected by validation leaves no run directory behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, run_inprocess

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16", "energy=off",
        "trainer.progress=false", "trainer.batch_size=16"]


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) -> sha256 of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def interrupted(tmp_path: Path, name: str, args: list[str]) -> Path:
    """A run with checkpoints/last at step 2 and no summary.json, as a run killed at step 3 leaves it."""
    run = tmp_path / name
    run_inprocess(run, [*args, "trainer.max_steps=3", "trainer.checkpoint_every=2"])  # the last step writes none
    (run / "summary.json").unlink()
    return run


def refused(run: Path, overrides: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_inprocess(run, overrides)
    assert exit_info.value.code == 2
    return str(exit_info.value.__cause__)


# --- item 2: resume checks the settings ----------------------------------------------------------

def test_resume_refuses_other_settings_naming_every_key_unless_forced(tmp_path):
    args = [*TINY, "method=fish", "method.density=0.05", "method.num_samples=16", "trainer.lr=0.05"]
    run = interrupted(tmp_path, "run", args)
    before = tree(run)

    # relaunched in its directory (the auto-resume path) with another learning rate: refused, untouched
    err = refused(run, [*args, "trainer.max_steps=4", "trainer.lr=0.5"])
    assert "trainer.lr: 0.05 -> 0.5" in err and "trainer.resume_force=true" in err
    assert tree(run) == before

    # another method and another model from the same checkpoint: every differing key is named,
    # before any weights load (today: KeyError 'step' / a raw state_dict error); nothing is left behind
    err = refused(tmp_path / "other", [*TINY, "method=bitfit", "model=tiny_opt", "trainer.max_steps=4", f"trainer.resume={run}"])
    assert "method.name: 'fish' -> 'bitfit'" in err and "model.name: 'tiny_bert' -> 'tiny_opt'" in err and "method.density" in err
    assert not (tmp_path / "other").exists()

    # longer training and other logging pass; the allowed differences are recorded
    s = run_inprocess(tmp_path / "longer", [*args, "trainer.max_steps=4", "trainer.num_threads=1", f"trainer.resume={run}"])
    assert s["status"] == "completed" and s["resumed_from"]["step"] == 2
    assert s["resume"]["forced"] is False and s["resume"]["differing"] == []
    assert {d["key"] for d in s["resume"]["allowed"]} >= {"trainer.max_steps", "trainer.num_threads"}
    err = refused(tmp_path / "shorter", [*args, "trainer.max_steps=1", f"trainer.resume={run}"])
    assert "trainer.max_steps: 3 -> 1" in err

    # forced: it resumes, and summary.json says so with the keys that differ
    s = run_inprocess(run, [*args, "trainer.max_steps=4", "trainer.checkpoint_every=1", "trainer.lr=0.5", "trainer.resume_force=true"])
    assert s["status"] == "completed" and s["resumed_from"]["step"] == 2
    assert s["resume"]["forced"] is True
    assert s["resume"]["differing"] == [{"key": "trainer.lr", "was": 0.05, "now": 0.5}]
    manifest = json.loads((run / "checkpoints/last/manifest.json").read_text())
    assert manifest["config"]["trainer"]["lr"] == 0.5  # a later resume compares with what ran last


# --- item 3: one process per run directory --------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from sparse_ft.jobs.rundir import RunDirLock
Path(sys.argv[1], "run.log").write_text("a run's log\\n")  # as Hydra's log handler of a real run has it
lock = RunDirLock(sys.argv[1]); lock.acquire(); print("locked", flush=True); time.sleep(120)
"""


@pytest.mark.slow
def test_a_second_run_on_a_locked_run_directory_fails_at_once_naming_the_pid(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(run)
        proc = run_cli([*TINY, "trainer.max_steps=2", f"hydra.run.dir={run}"], tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-3000:]
        assert f"PID {holder.pid}" in out and "in use by another run" in out
        assert tree(run) == before  # no summary, no metrics, Hydra's files put back
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (kill -9): its lock file is stale, the next run takes it over
    proc = run_cli([*TINY, "trainer.max_steps=2", f"hydra.run.dir={run}"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"stale lock of PID {holder.pid}" in out
    assert summary(run)["status"] == "completed"
    assert json.loads((run / ".lock").read_text())["pid"] != holder.pid


# --- item 4: a completed run directory is never modified ------------------------------------------

@pytest.mark.slow
def test_relaunching_a_completed_run_never_modifies_it(tmp_path):
    run = tmp_path / "r"
    args = [*TINY, "trainer.max_steps=2", f"hydra.run.dir={run}"]
    assert run_cli(args, tmp_path).returncode == 0
    before = tree(run)
    assert ".hydra/overrides.yaml" in before and "run.log" in before

    same = run_cli(args, tmp_path)
    assert same.returncode == 0 and "already holds a completed run" in same.stdout + same.stderr
    assert tree(run) == before

    other = run_cli([*args, "trainer.lr=0.5", "seed=7"], tmp_path)
    out = other.stdout + other.stderr
    assert other.returncode == 2, out[-3000:]
    assert "trainer.lr: 5e-05 -> 0.5" in out and "seed: 42 -> 7" in out
    assert tree(run) == before  # .hydra/config.yaml and overrides.yaml still say what ran


@pytest.mark.slow
def test_a_multirun_resumes_in_its_sweep_dir_and_refuses_other_settings(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.max_steps=2", "seed=1,2", f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, tmp_path).returncode == 0
    jobs = {n: tree(sweep / n) for n in ("0", "1")}

    again = run_cli(args, tmp_path)  # the README's resume of a multirun: the same command + hydra.sweep.dir
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already holds a completed run") == 2
    assert {n: tree(sweep / n) for n in jobs} == jobs

    other = run_cli([*args, "trainer.lr=0.5"], tmp_path)
    out = other.stdout + other.stderr
    assert other.returncode == 1, out[-3000:]  # the sweep's exit status counts the refused jobs
    assert out.count("trainer.lr: 5e-05 -> 0.5") == 2 and "2 run(s) in" in out
    assert {n: tree(sweep / n) for n in jobs} == jobs


def test_a_stop_signal_during_the_pre_flight_leaves_a_completed_run_as_it_was(tmp_path, monkeypatch):
    from sparse_ft.train.preemption import Terminated

    run = tmp_path / "r"
    args = [*TINY, "trainer.max_steps=2"]
    assert run_inprocess(run, args)["status"] == "completed"
    before = tree(run)

    def signal_arrives(*a, **k):
        raise Terminated(15, "while the job started (before data loading)", False)

    monkeypatch.setattr("sparse_ft.jobs.resume.completed_run", signal_arrives)
    with pytest.raises(SystemExit) as stopped:
        run_inprocess(run, args)
    assert stopped.value.code == 143
    assert tree(run) == before  # the completed run's summary is not replaced by an interrupted one
    with pytest.raises(SystemExit) as stopped:  # a new run says it was interrupted
        run_inprocess(tmp_path / "new", args)
    assert stopped.value.code == 143 and summary(tmp_path / "new")["status"] == "interrupted"


# --- item 10: the sweep plan validates every job --------------------------------------------------

@pytest.mark.parametrize("grid,key,jobs", [
    (["trainer.lr=abc,1e-3"], "trainer.lr", [0]),
    (["+trainer.lerning_rate=1,2"], "trainer.lerning_rate", [0, 1]),
])
def test_sweep_plan_validates_every_job_as_run_py_would(capsys, grid, key, jobs):
    from sparse_ft.config.sweep_plan import main

    assert main([*grid, "model=tiny_bert", "--limit", "0"]) == 2
    err = capsys.readouterr().err
    for num in jobs:
        assert f"job #{num} (" in err
    assert f"): {key}: " in err
    assert f"{len(jobs)} of 2 job(s) would fail validation" in err
    assert main(["trainer.lr=1e-4,1e-3", "model=tiny_bert", "--limit", "0"]) == 0


# --- item 11: validation errors leave no run directory -------------------------------------------

def test_a_command_rejected_by_validation_leaves_no_run_directory(tmp_path):
    proc = run_cli([*TINY, "trainer.lr=abc"], tmp_path / "out")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "trainer.lr" in out, out[-3000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
    # in-process (no Hydra) as well; a failure after validation keeps its directory and summary
    refused(tmp_path / "bad", [*TINY, "trainer.max_steps=abc"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        run_inprocess(tmp_path / "late", [*TINY, "trainer.max_steps=2", "model.random_init=false", "model.name_or_path=/no/such/model"])
    assert summary(tmp_path / "late")["status"] == "failed"


# --- item 14: the README says what a run directory holds and how a multirun resumes ---------------

def test_readme_documents_the_run_directory_lock_and_multirun_resume():
    text = (REPO / "README.md").read_text()
    assert "| `.lock` |" in text
    assert "hydra.sweep.dir=<sweep dir>" in text
    assert "only when a checkpoint was written" in text
    assert "resume_force" in text and "MAY_DIFFER" in text
