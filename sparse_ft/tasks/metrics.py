"""Task metrics (GLUE conventions), as fractions in [0, 1] — never percent.

Every metric function takes ``(predictions, labels)`` as NumPy arrays and returns a dict whose
``main`` entry is the task's selection metric:

============  ==========================================  =====================================
kind          keys                                        ``main``
============  ==========================================  =====================================
accuracy      accuracy                                    accuracy
f1_accuracy   accuracy, f1, acc_and_f1                    mean of f1 and accuracy (MRPC, QQP)
mcc           matthews_corrcoef, accuracy                 matthews_corrcoef (CoLA)
correlation   pearson, spearman, corr                     mean of pearson and spearman (STS-B)
============  ==========================================  =====================================

Every kind also reports ``invalid_predictions`` (see below; 0 for classifier heads).
This is the GLUE-leaderboard convention, so the GLUE score is the plain mean of the per-task
``main`` values (:func:`glue_average`). ``f1`` is the F1 of the positive class (label 1).

Classification predictions may be class ids (shape ``(n,)``) or logits / probabilities
(shape ``(n, num_classes)``, reduced with argmax). Regression predictions may be ``(n,)`` or
``(n, 1)``. A correlation with a constant input is undefined; it is reported as 0.0 (and logged)
so best-checkpoint selection never compares NaNs.

Invalid predictions: a text-to-text model (T5) can generate text that is no label word (decoded as
class id ``-1``, any negative id counts) or, for STS-B, no number (``NaN``, any non-finite value).
They are scored, never dropped, and every metric dict reports how many there were as
``invalid_predictions``. As in T5's own GLUE evaluation: an invalid class is counted as a wrong
prediction for every metric — it is replaced by a class other than the true one (for binary tasks
the opposite class, so a positive example becomes a false negative and a negative one a false
positive of the positive-class F1) — and an invalid regression value is scored as ``-1.0``, outside
the 0–5 STS-B scale (T5's ``string_to_float`` default).
"""

from __future__ import annotations

import logging
import math
from typing import Mapping

import numpy as np

logger = logging.getLogger(__name__)

METRIC_KINDS = ("accuracy", "f1_accuracy", "mcc", "correlation")

# GLUE task -> metric kind
GLUE_METRIC_KIND = {
    "cola": "mcc",
    "sst2": "accuracy",
    "mrpc": "f1_accuracy",
    "qqp": "f1_accuracy",
    "stsb": "correlation",
    "mnli": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
    "wnli": "accuracy",
}

# metric kind -> the key that `main` copies (TaskData.main_metric)
MAIN_KEY = {
    "accuracy": "accuracy",
    "f1_accuracy": "acc_and_f1",
    "mcc": "matthews_corrcoef",
    "correlation": "corr",
}


INVALID_REGRESSION_VALUE = -1.0  # how a non-number is scored (T5: string_to_float(default=-1))


def _as_class_ids(predictions) -> np.ndarray:
    p = np.asarray(predictions)
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    if p.ndim != 1:
        raise ValueError(f"classification predictions must be (n,) ids or (n, classes) scores, got shape {p.shape}")
    if p.dtype.kind == "f":  # ids that went through a float array (NaN: not a label word)
        p = np.where(np.isfinite(p), p, -1)
    return p.astype(np.int64)


def _as_values(predictions) -> np.ndarray:
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"regression predictions must be (n,) or (n, 1), got shape {p.shape}")
    return p


def invalid_class_mask(predictions) -> np.ndarray:
    """True where a classification prediction is no class (a negative id: T5 text that is no label word)."""
    return _as_class_ids(predictions) < 0


def invalid_value_mask(predictions) -> np.ndarray:
    """True where a regression prediction is no number (NaN / inf: T5 text that is no number)."""
    return ~np.isfinite(_as_values(predictions))


def _class_ids_scored(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) as class ids, every invalid prediction replaced by a wrong class."""
    p, y = _as_class_ids(predictions), np.asarray(labels).astype(np.int64)
    _check(p, y)
    bad = p < 0
    if bad.any():
        p = np.where(bad, (y == 0).astype(np.int64), p)  # 1 where the truth is 0, else 0: always wrong
    return p, y


def _values_scored(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_values(predictions), np.asarray(labels, dtype=np.float64)
    _check(p, y)
    return np.where(np.isfinite(p), p, INVALID_REGRESSION_VALUE), y


def _check(p: np.ndarray, y: np.ndarray) -> None:
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    if len(y) == 0:
        raise ValueError("cannot compute a metric on zero examples")


def accuracy(predictions, labels) -> float:
    p, y = _class_ids_scored(predictions, labels)
    return float((p == y).mean())


def f1_positive(predictions, labels) -> float:
    """F1 of class 1 (0.0 when there are no true and no predicted positives); an invalid
    prediction is a false negative on a positive example and a false positive on a negative one."""
    from sklearn.metrics import f1_score

    p, y = _class_ids_scored(predictions, labels)
    return float(f1_score(y, p, pos_label=1, average="binary", zero_division=0))


def matthews_corrcoef(predictions, labels) -> float:
    from sklearn.metrics import matthews_corrcoef as mcc

    p, y = _class_ids_scored(predictions, labels)
    return float(mcc(y, p))


def _corr(fn, name: str, p: np.ndarray, y: np.ndarray) -> float:
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        logger.warning("%s correlation undefined (constant input); reporting 0.0", name)
        return 0.0
    value = float(fn(p, y)[0])
    return 0.0 if math.isnan(value) else value


def pearson(predictions, labels) -> float:
    from scipy.stats import pearsonr

    p, y = _values_scored(predictions, labels)
    return _corr(pearsonr, "pearson", p, y)


def spearman(predictions, labels) -> float:
    from scipy.stats import spearmanr

    p, y = _values_scored(predictions, labels)
    return _corr(spearmanr, "spearman", p, y)


def compute_metrics(kind: str, predictions, labels) -> dict:
    """All metrics of one kind (see the module docstring) plus ``main``."""
    if kind == "accuracy":
        out = {"accuracy": accuracy(predictions, labels)}
    elif kind == "f1_accuracy":
        acc, f1 = accuracy(predictions, labels), f1_positive(predictions, labels)
        out = {"accuracy": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    elif kind == "mcc":
        out = {
            "matthews_corrcoef": matthews_corrcoef(predictions, labels),
            "accuracy": accuracy(predictions, labels),
        }
    elif kind == "correlation":
        pr, sp = pearson(predictions, labels), spearman(predictions, labels)
        out = {"pearson": pr, "spearman": sp, "corr": (pr + sp) / 2}
    else:
        raise ValueError(f"unknown metric kind {kind!r}; expected one of {METRIC_KINDS}")
    out["main"] = out[MAIN_KEY[kind]]
    invalid = invalid_value_mask(predictions) if kind == "correlation" else invalid_class_mask(predictions)
    out["invalid_predictions"] = int(invalid.sum())
    if out["invalid_predictions"]:
        logger.warning("%d of %d predictions are no valid %s: scored as wrong", out["invalid_predictions"], len(invalid),
                       "number" if kind == "correlation" else "label")
    return out


class TaskMetric:
    """Picklable ``(predictions, labels) -> dict`` callable (TaskData.metric_fn)."""

    def __init__(self, kind: str):
        if kind not in METRIC_KINDS:
            raise ValueError(f"unknown metric kind {kind!r}; expected one of {METRIC_KINDS}")
        self.kind = kind

    @property
    def main_metric(self) -> str:
        return MAIN_KEY[self.kind]

    def __call__(self, predictions, labels) -> dict:
        return compute_metrics(self.kind, predictions, labels)

    def __repr__(self) -> str:
        return f"TaskMetric({self.kind!r})"


def glue_metric(task: str) -> TaskMetric:
    """The metric callable of a GLUE task (``cola``, ``sst2``, ..., ``wnli``)."""
    try:
        return TaskMetric(GLUE_METRIC_KIND[task])
    except KeyError:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_METRIC_KIND)}") from None


def glue_average(mains: Mapping[str, float]) -> float:
    """GLUE score: the unweighted mean of the per-task ``main`` values (fractions).

    Pass one entry per task (e.g. ``{"rte": 0.70, "mrpc": 0.86, ...}``); whatever entries are given
    are averaged (if you pass both MNLI-m and MNLI-mm they count as two entries).
    """
    if not mains:
        raise ValueError("glue_average needs at least one task")
    values = [float(v) for v in mains.values()]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"glue_average got NaN in {dict(mains)}")
    return float(sum(values) / len(values))
