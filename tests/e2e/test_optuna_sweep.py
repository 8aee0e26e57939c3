"""hydra/sweeper=read_optuna: the READ paper's Bayesian lr search through hydra-optuna-sweeper, on a
tiny model; the study persists in SQLite and a second command continues it."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import run_cli, run_dirs

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=32", "task.max_eval_samples=16",
        "trainer.max_steps=2", "trainer.batch_size=8", "method=dense", "energy=off", "trainer.progress=false"]


def _trials(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]


@pytest.mark.slow
def test_optuna_preset_runs_trials_and_a_second_command_resumes_the_study(tmp_path):
    db = tmp_path / "study.db"
    args = ["-m", "hydra/sweeper=read_optuna", f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.study_name=tiny",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2", *TINY]
    first = run_cli(args, tmp_path / "a", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _trials(db) == 3 and len(run_dirs(tmp_path / "a")) == 3
    second = run_cli([*args[:-len(TINY)], "hydra.sweeper.n_trials=2", *TINY], tmp_path / "b", timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _trials(db) == 5  # the same study, two more trials
    lrs = [float(l.split(":", 1)[1]) for d in run_dirs(tmp_path / "a") for l in (d / "config.yaml").read_text().splitlines() if l.strip().startswith("lr:")]
    assert len(lrs) == 3 and all(1e-6 <= lr <= 3e-3 for lr in lrs)
