"""Metrics against values computed by hand (not by calling scikit-learn / scipy again)."""

import math
import pickle

import numpy as np
import pytest

from sparse_ft.tasks import metrics as M


def test_accuracy_ids_and_logits():
    # matches at positions 0, 1, 3 -> 3/4
    assert M.accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == pytest.approx(0.75)
    logits = np.array([[2.0, 1.0], [0.1, 0.9], [0.3, 0.7], [5.0, -1.0]])  # argmax 0, 1, 1, 0
    out = M.TaskMetric("accuracy")(logits, np.array([0, 1, 0, 0]))
    assert out == {"accuracy": pytest.approx(0.75), "main": pytest.approx(0.75), "invalid_predictions": 0}


def test_f1_accuracy_and_main_is_their_mean():
    preds = np.array([1, 1, 0, 1, 0])
    labels = np.array([1, 0, 0, 1, 1])
    # TP = 2 (pos 0, 3), FP = 1 (pos 1), FN = 1 (pos 4): P = R = 2/3 -> F1 = 2/3; accuracy 3/5
    out = M.glue_metric("mrpc")(preds, labels)
    assert out["f1"] == pytest.approx(2 / 3)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["main"] == pytest.approx((2 / 3 + 0.6) / 2)
    assert out["acc_and_f1"] == out["main"]
    assert M.glue_metric("qqp").main_metric == "acc_and_f1"


def test_f1_is_for_positive_class_and_zero_without_positives():
    # all predicted 0, two true positives: F1 of class 1 is 0 (no warning-valued NaN)
    assert M.f1_positive(np.array([0, 0, 0]), np.array([1, 1, 0])) == 0.0
    # flipping the roles changes F1: class-1 F1 here = 2*1/(2*1+0+1) = 2/3
    assert M.f1_positive(np.array([1, 0, 0]), np.array([1, 1, 0])) == pytest.approx(2 / 3)


def test_matthews_cola():
    preds = np.array([1, 1, 0, 0])
    labels = np.array([1, 0, 0, 0])
    # TP=1 FP=1 TN=2 FN=0: (1*2 - 1*0) / sqrt(2 * 1 * 3 * 2) = 2 / sqrt(12)
    out = M.glue_metric("cola")(preds, labels)
    assert out["matthews_corrcoef"] == pytest.approx(2 / math.sqrt(12))
    assert out["main"] == out["matthews_corrcoef"]
    assert out["accuracy"] == pytest.approx(0.75)
    # constant predictions -> 0
    assert M.matthews_corrcoef(np.zeros(4, int), labels) == 0.0


def test_pearson_spearman_stsb():
    preds = np.array([1.0, 2.0, 3.0])
    labels = np.array([1.0, 2.0, 4.0])
    # deviations (-1,0,1) and (-4/3,-1/3,5/3): cov-sum 3, sums of squares 2 and 14/3
    r = 3 / math.sqrt(2 * 14 / 3)
    out = M.glue_metric("stsb")(preds.reshape(-1, 1), labels)
    assert out["pearson"] == pytest.approx(r)
    assert out["spearman"] == pytest.approx(1.0)  # same ranks
    assert out["main"] == pytest.approx((r + 1.0) / 2)
    # reversed ranks
    assert M.spearman(np.array([3.0, 2.0, 1.0]), labels) == pytest.approx(-1.0)


def test_constant_regression_prediction_is_zero_not_nan():
    out = M.glue_metric("stsb")(np.full(4, 2.5), np.array([0.0, 1.0, 2.0, 5.0]))
    assert out["pearson"] == 0.0 and out["spearman"] == 0.0 and out["main"] == 0.0


@pytest.mark.parametrize(
    "task,main",
    [("rte", "accuracy"), ("sst2", "accuracy"), ("qnli", "accuracy"), ("mnli", "accuracy"), ("wnli", "accuracy"),
     ("mrpc", "acc_and_f1"), ("qqp", "acc_and_f1"), ("cola", "matthews_corrcoef"), ("stsb", "corr")],
)  # fmt: skip
def test_main_metric_per_glue_task(task, main):
    assert M.glue_metric(task).main_metric == main


def test_values_are_fractions_not_percent():
    out = M.glue_metric("mrpc")(np.array([1, 1]), np.array([1, 1]))
    assert out["accuracy"] == 1.0 and out["f1"] == 1.0


def test_glue_average():
    assert M.glue_average({"rte": 0.5, "mrpc": 0.8, "cola": 0.2}) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.glue_average({})
    with pytest.raises(ValueError):
        M.glue_average({"rte": float("nan")})


def test_errors_and_pickling():
    with pytest.raises(ValueError):
        M.accuracy(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError):
        M.accuracy(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        M.glue_metric("ax")
    with pytest.raises(ValueError):
        M.TaskMetric("bleu")
    fn = pickle.loads(pickle.dumps(M.glue_metric("cola")))
    assert fn.kind == "mcc"
