"""trainer.early_stopping_patience: N evaluations in a row without a better validation main metric
stop the run; select_best then restores the best checkpoint; summary.json says where it stopped;
the count survives a resume; bad values fail before anything loads, naming the key."""

from __future__ import annotations

import json

import pytest

from conftest import compose, run_inprocess
from sparse_ft.config.validation import ConfigError, validate

# lr 1e-12: the weights do not move, so the validation metric plateaus from the first evaluation
PLATEAU = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16",
           "trainer.batch_size=8", "trainer.lr=1e-12", "trainer.scheduler=constant", "trainer.eval_every=1",
           "trainer.max_steps=20", "trainer.save_final=false"]


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_a_plateau_stops_after_patience_evaluations_at_the_best_checkpoint(tmp_path):
    run = tmp_path / "r"
    s = run_inprocess(run, [*PLATEAU, "trainer.early_stopping_patience=3"])
    assert s["status"] == "completed"
    # best at step 1 (the first evaluation); steps 2, 3, 4 bring no improvement → stop at 4
    assert s["early_stopping"] == {"patience": 3, "stopped_early_at_step": 4, "evals_without_improvement": 3, "best_step": 1}
    assert [r["step"] for r in records(run, "train")] == [1, 2, 3, 4]
    assert [r["step"] for r in records(run, "early_stop")] == [4]
    assert s["best"]["step"] == 1
    assert s["metrics"]["validation"]["main"] == s["best"]["main"]


def test_patience_zero_runs_every_step(tmp_path):
    s = run_inprocess(tmp_path / "r", [*PLATEAU, "trainer.max_steps=5"])
    assert s["early_stopping"]["patience"] == 0 and s["early_stopping"]["stopped_early_at_step"] is None
    assert [r["step"] for r in records(tmp_path / "r", "train")] == [1, 2, 3, 4, 5]


def test_the_count_survives_a_resume(tmp_path):
    # a first run to step 3 checkpoints at step 2 (one evaluation without improvement so far);
    # resumed under the full budget it must stop at step 5 (patience 4), as an uninterrupted run
    # does; a count that restarted at 0 would stop at step 6
    args = [*PLATEAU, "trainer.early_stopping_patience=4", "trainer.checkpoint_every=1"]
    full = run_inprocess(tmp_path / "full", args)
    assert full["early_stopping"]["stopped_early_at_step"] == 5
    run_inprocess(tmp_path / "cut", [*args, "trainer.max_steps=3"])
    last = tmp_path / "cut" / "checkpoints" / "last"
    assert json.loads((last / "manifest.json").read_text())["step"] == 2
    s = run_inprocess(tmp_path / "resumed", [*args, f"trainer.resume={last}"])
    assert s["resumed_from"]["step"] == 2
    assert s["early_stopping"] == full["early_stopping"]
    assert [r["step"] for r in records(tmp_path / "resumed", "train")] == [3, 4, 5]


@pytest.mark.parametrize("value", ["-1", "1.5", "true", "abc"])
def test_bad_patience_is_rejected_naming_the_key(value):
    cfg = compose(["model=tiny_bert", "task=synthetic_nli", f"trainer.early_stopping_patience={value}"])
    with pytest.raises(ConfigError, match="trainer.early_stopping_patience"):
        validate(cfg)
