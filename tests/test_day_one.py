"""Issue 15, "what a researcher hits on day one": each test fails on the code before its fix."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, compose, run_cli, run_inprocess

ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


@pytest.fixture(autouse=True)
def one_thread():
    # in-process runs on a 2-core box shared with other jobs: one thread is far faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_mrpc(root: Path, n_train: int = 24, n_dev: int = 12, with_test: bool = False) -> Path:
    """A small GLUE-layout MRPC folder (header `Quality #1 ID #2 ID #1 String #2 String`)."""
    folder = root / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    words = "the cat sat on a mat while dogs ran past quickly and slowly today".split()

    def rows(n, seed, labeled=True):
        rng = np.random.default_rng(seed)
        out = []
        for i in range(n):
            a = " ".join(rng.choice(words, 6))
            b = a if i % 2 else " ".join(rng.choice(words, 6))
            out.append(f"{i % 2}\t{i}\t{i + 1000}\t{a}\t{b}" if labeled else f"{i}\t{i}\t{i + 1000}\t{a}\t{b}")
        return out

    (folder / "train.tsv").write_text("\n".join(["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_train, 0)]) + "\n")
    (folder / "dev.tsv").write_text("\n".join(["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_dev, 1)]) + "\n")
    if with_test:
        (folder / "test.tsv").write_text("\n".join(["index\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows(n_dev, 2, False)]) + "\n")
    return root


# --- item 2: T5 output that is no label word / no number --------------------------------------------


def test_invalid_predictions_are_wrong_for_accuracy():
    from sparse_ft.tasks.metrics import glue_metric

    out = glue_metric("rte")(np.array([0, -1, 1, -1]), np.array([0, 0, 1, 1]))
    assert out["accuracy"] == pytest.approx(0.5) and out["invalid_predictions"] == 2
    out = glue_metric("mnli")(np.array([2, -1, -1]), np.array([2, 0, 2]))  # 3 classes
    assert out["accuracy"] == pytest.approx(1 / 3) and out["invalid_predictions"] == 2


def test_invalid_predictions_are_wrong_for_positive_class_f1():
    from sparse_ft.tasks.metrics import glue_metric

    # labels 1 1 0 0 1; preds 1 -1 -1 0 1: the -1 on a positive is a false negative, on a negative a false positive
    # TP = 2, FN = 1, FP = 1 -> F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 3/5
    for task in ("mrpc", "qqp"):
        out = glue_metric(task)(np.array([1, -1, -1, 0, 1]), np.array([1, 1, 0, 0, 1]))
        assert out["f1"] == pytest.approx(2 / 3)
        assert out["accuracy"] == pytest.approx(0.6)
        assert out["main"] == pytest.approx((2 / 3 + 0.6) / 2)
        assert out["invalid_predictions"] == 2
    # every prediction invalid: no crash, nothing right
    out = glue_metric("mrpc")(np.full(4, -1), np.array([1, 0, 1, 0]))
    assert out["accuracy"] == 0.0 and out["f1"] == 0.0 and out["invalid_predictions"] == 4


def test_invalid_predictions_are_wrong_for_matthews():
    from sparse_ft.tasks.metrics import glue_metric

    # labels 1 0 0 0; preds 1 -1 0 0 -> scored 1 1 0 0: TP=1 FP=1 TN=2 FN=0 -> 2/sqrt(12)
    out = glue_metric("cola")(np.array([1, -1, 0, 0]), np.array([1, 0, 0, 0]))
    assert out["matthews_corrcoef"] == pytest.approx(2 / math.sqrt(12))
    assert out["accuracy"] == pytest.approx(0.75) and out["invalid_predictions"] == 1


def test_invalid_regression_values_are_scored_not_dropped():
    from scipy.stats import pearsonr, spearmanr

    from sparse_ft.tasks.metrics import INVALID_REGRESSION_VALUE, glue_metric

    labels = np.array([0.4, 1.0, 2.2, 3.8, 5.0])
    preds = np.array([0.5, np.nan, 2.0, np.nan, 4.6])
    out = glue_metric("stsb")(preds, labels)
    scored = np.where(np.isnan(preds), INVALID_REGRESSION_VALUE, preds)
    assert INVALID_REGRESSION_VALUE == -1.0
    assert out["pearson"] == pytest.approx(pearsonr(scored, labels)[0])
    assert out["spearman"] == pytest.approx(spearmanr(scored, labels)[0])
    assert out["invalid_predictions"] == 2 and math.isfinite(out["main"])
    valid = glue_metric("stsb")(np.where(np.isnan(preds), labels, preds), labels)
    assert out["main"] < valid["main"]  # an invalid output costs score
    assert valid["invalid_predictions"] == 0


def test_every_glue_metric_reports_invalid_predictions():
    from sparse_ft.tasks.metrics import GLUE_METRIC_KIND, glue_metric

    for task, kind in GLUE_METRIC_KIND.items():
        labels = np.array([0.5, 1.0, 4.0, 3.0]) if kind == "correlation" else np.array([0, 1, 1, 0])
        preds = np.array([0.5, np.nan, 4.0, 2.0]) if kind == "correlation" else np.array([0, -1, 1, 0])
        out = glue_metric(task)(preds, labels)
        assert out["invalid_predictions"] == 1, task
        assert all(math.isfinite(v) for v in out.values()), (task, out)
        clean = glue_metric(task)(labels, labels)
        assert clean["invalid_predictions"] == 0 and clean["main"] == pytest.approx(1.0)
        assert out["main"] < clean["main"], task


def test_submission_file_with_invalid_t5_outputs(tmp_path):
    from sparse_ft.tasks.glue import load_glue, write_submission

    write_mrpc(tmp_path / "glue", with_test=True)
    cfg = compose(["task=mrpc", f"task.data_dir={tmp_path / 'glue'}"])
    task = load_glue(cfg.task)
    n = len(task.splits["test"])
    preds = np.array([-1, 1] * (n // 2))
    path = write_submission(task, "test", preds, tmp_path / "pred")
    values = [r.split("\t")[1] for r in path.read_text().splitlines()[1:]]
    assert values == ["0", "1"] * (n // 2)


def test_t5_on_mrpc_completes_and_reports_invalid_predictions(tmp_path):
    """A barely trained T5 generates text that is no label word: the run completes (sklearn used to
    raise "Target is multiclass but average='binary'") and says how many outputs were invalid."""
    glue = write_mrpc(tmp_path / "glue")
    s = run_inprocess(tmp_path / "r", ["model=tiny_t5", "task=mrpc", f"task.data_dir={glue}", "trainer.max_steps=2",
                                       "trainer.batch_size=8", "trainer.eval_every=1"])
    assert s["status"] == "completed", s.get("error")
    v = s["metrics"]["validation"]
    assert {"f1", "accuracy", "acc_and_f1", "invalid_predictions"} <= set(v)
    assert 0 < v["invalid_predictions"] <= 12  # the random tiny T5 generates no label words
    evals = [json.loads(l) for l in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [e["invalid_predictions"] for e in evals if e["type"] == "eval"] and all(
        e["invalid_predictions"] >= 0 for e in evals if e["type"] == "eval")
