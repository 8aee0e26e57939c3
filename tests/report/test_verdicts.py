"""The verdict rules (report/verdicts.py) on fixtures: a claim is decided only when the dense
reference clears the majority class by ≥ 10 points, each side has ≥ 3 seeds and the difference is
outside the seed noise; the majority-class score a run records (TaskData.majority_class_scores)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparse_ft.report import verdicts as V
from sparse_ft.tasks.base import TaskData, TextExample
from sparse_ft.tasks.metrics import glue_metric

DENSE = [80.0, 80.5, 79.5]


def _welch_reference(a, b, conf=0.95):
    """Welch's interval written from its textbook formula, with the t quantile from scipy."""
    from scipy.stats import t

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    h = t.ppf(0.5 + conf / 2, df) * math.sqrt(va + vb)
    return ma - mb - h, ma - mb + h


def test_clear_difference_holds_and_its_opposite_does_not():
    fish, rand = [85.0, 85.4, 84.6], [70.0, 70.5, 69.5]
    d = V.decide_difference(fish, rand, 0.0, reference=DENSE, majority=50.9, names=("FISH", "random"))
    assert d.verdict == V.HOLDS and "95% CI" in d.text
    d = V.decide_difference(rand, fish, 0.0, reference=DENSE, majority=50.9)
    assert d.verdict == V.DOES_NOT_HOLD


def test_interval_is_welchs():
    a, b = [85.0, 86.0, 83.0, 84.5], [80.0, 82.5, 79.0]
    lo, hi = V.welch_interval(V.stats(a), V.stats(b))
    rlo, rhi = _welch_reference(a, b)
    assert lo == pytest.approx(rlo) and hi == pytest.approx(rhi)


def test_dense_at_the_majority_class_is_undecidable():
    # MRPC after one epoch: dense 76.5, majority-class main score 74.8
    d = V.decide_difference([60.0, 60.1, 59.9], [76.5, 76.4, 76.6], -1.0, majority=74.8)
    assert d.verdict == V.UNDECIDABLE and "dense only 1.7 points above the majority class" in d.text
    d = V.decide_difference([85.0] * 3, [70.0] * 3, 0.0, reference=DENSE, majority=None)
    assert d.verdict == V.UNDECIDABLE and "majority-class score" in d.text


def test_dense_at_the_ceiling_is_undecidable():
    # the generated NLI task: dense 99.5, FISH 100.0
    d = V.decide_difference([100.0, 100.0, 99.9], [99.5, 99.4, 99.6], -1.0, majority=50.0)
    assert d.verdict == V.UNDECIDABLE and "dense at the ceiling (99.5" in d.text


def test_difference_within_seed_noise_is_undecidable():
    d = V.decide_difference([80.0, 82.0, 78.0], [79.0, 81.5, 78.5], 0.0, reference=DENSE, majority=50.9)
    assert d.verdict == V.UNDECIDABLE and "within seed noise" in d.text
    # an equivalence claim "a within 1 point of b": the interval straddles −1
    d = V.decide_difference([79.0, 81.0, 77.0], [80.0, 80.5, 79.5], -1.0, majority=50.9)
    assert d.verdict == V.UNDECIDABLE and "within seed noise" in d.text


def test_fewer_than_three_seeds_is_undecidable():
    d = V.decide_difference([85.0, 85.4], [70.0, 70.5, 69.5], 0.0, reference=DENSE, majority=50.9,
                            names=("FISH", "random"))
    assert d.verdict == V.UNDECIDABLE and "fewer than 3 seeds (FISH 2, random 3)" in d.text


def test_two_sides_both_at_the_majority_class_are_undecidable_even_with_no_spread():
    floor = [50.92, 50.92, 50.92]
    d = V.decide_difference(floor, floor, 0.0, reference=DENSE, majority=50.92, names=("MvP", "MaP"))
    assert d.verdict == V.UNDECIDABLE and "both at the majority-class score (50.92)" in d.text
    d = V.decide_difference([75.0, 75.5, 74.8], floor, 0.0, reference=DENSE, majority=50.92, names=("PST", "MvP"))
    assert d.verdict == V.HOLDS  # one side off the floor: decided as usual


def test_paired_drops_are_decided_on_the_one_sample_t_interval_of_their_mean():
    from scipy.stats import t

    drops = [0.2, 0.3, 0.25]
    m, sd = 0.25, 0.05
    h = t.ppf(0.975, 2) * sd / math.sqrt(3)  # written from the textbook formula
    assert V.t_interval(V.stats(drops)) == pytest.approx((m - h, m + h))
    d = V.decide_mean(drops, 1.0, below=True, name="drop")
    assert d.verdict == V.HOLDS and f"CI [{m - h:+.2f}, {m + h:+.2f}], claim ≤ 1" in d.text
    assert V.decide_mean([3.0, 2.8, 3.3], 1.0, below=True).verdict == V.DOES_NOT_HOLD
    assert V.decide_mean([3.0, 2.8, 3.3], 1.0).verdict == V.HOLDS  # "mean > 1"
    noisy = V.decide_mean([-0.5, 2.0, 0.0], 1.0, below=True)  # mean 0.5: within 1 on average, not beyond noise
    assert noisy.verdict == V.UNDECIDABLE and "within seed noise" in noisy.text
    one = V.decide_mean([0.1], 1.0, below=True)
    assert one.verdict == V.UNDECIDABLE and "fewer than 3 seeds (1)" in one.text


def test_combine():
    h, n, u = (V.Decision(v, "") for v in (V.HOLDS, V.DOES_NOT_HOLD, V.UNDECIDABLE))
    assert V.combine([h, h]) == V.HOLDS and V.combine([h, u]) == V.UNDECIDABLE
    assert V.combine([u, n]) == V.DOES_NOT_HOLD and V.combine([]) == V.NOT_MEASURABLE


class _Run:
    def __init__(self, summary):
        self.summary = summary


def test_majority_score_and_measured_alone_read_the_summary():
    runs = [_Run({}), _Run({"data": {"majority_class_score": {"validation": 0.509}}})]
    assert V.majority_score(runs) == pytest.approx(50.9) and V.majority_score(runs[:1]) is None
    assert V.measured_alone(_Run({}))[0] is None  # unknown conditions: not comparable
    shared = {"process": "shared", "concurrent_jobs": 1, "comparable": False, "why_not": "its process ran 1 job(s) before it"}
    assert V.measured_alone(_Run({"measurement": shared})) == (False, "its process ran 1 job(s) before it")
    assert V.measured_alone(_Run({"measurement": {"process": "own", "concurrent_jobs": 1, "comparable": True}}))[0] is True


def test_task_majority_class_scores_use_the_main_metric():
    ex = lambda labels: [TextExample(str(i), "a", "b", y) for i, y in enumerate(labels)]  # noqa: E731
    labels = [1] * 7 + [0] * 3
    task = TaskData(name="mrpc", modality="text", problem="classification", label_names=["no", "yes"],
                    splits={"train": ex([0, 1]), "validation": ex(labels), "test": ex([None] * 4)},
                    train_split="train", eval_splits=["validation"], test_split="test", main_metric="acc_and_f1",
                    metric_fn=glue_metric("mrpc"))
    # all "yes": accuracy 0.7, F1 = 2·0.7/(1+0.7); MRPC's main is their mean; the unlabeled test is skipped
    f1 = 2 * 0.7 / 1.7
    assert task.majority_class_scores() == {"validation": pytest.approx((0.7 + f1) / 2)}
    sst = TaskData(name="sst2", modality="text", problem="classification", label_names=["neg", "pos"],
                   splits={"validation": ex([0, 0, 0, 1])}, train_split="train", eval_splits=["validation"],
                   test_split=None, main_metric="accuracy", metric_fn=glue_metric("sst2"))
    assert sst.majority_class_scores() == {"validation": 0.75}
    assert np.isclose(V.stats([1.0, 2.0, 3.0]).std, 1.0)


class _Cfg:
    """A completed run as select_lr / Reported read it."""

    def __init__(self, lr, main, test=None, seed=1, method="fish", density=0.005):
        self.completed, self.main, self.test_main = True, main, test
        self.model, self.task, self.method, self.seed = "minilm", "sst2", method, seed
        self.config = {"model": {"name": "minilm"}, "task": {"name": "sst2"}, "method": {"name": method, "density": density},
                       "trainer": {"lr": lr, "epochs": 1}, "seed": seed}
        self.summary = {"data": {"majority_class_score": {"validation": 0.52, "test": 0.509}}}


def test_select_lr_keeps_the_best_mean_validation_lr_per_setting_and_reports_the_test_score():
    runs = [_Cfg(1e-4, 0.80, 0.70, s) for s in (1, 2, 3)] + [_Cfg(1e-3, 0.85, 0.60, s) for s in (1, 2, 3)]
    runs += [_Cfg(1e-4, 0.75, 0.74, 1, density=0.02), _Cfg(1e-3, 0.70, 0.90, 1, density=0.02)]  # another setting
    kept = V.select_lr(runs)
    assert {(r.config["method"]["density"], r.config["trainer"]["lr"]) for r in kept} == {(0.005, 1e-3), (0.02, 1e-4)}
    assert len(kept) == 4  # the three seeds of the selected lr, and the other setting's one
    rep = V.for_claims(runs)
    assert sorted(r.main for r in rep) == [0.6, 0.6, 0.6, 0.74]  # test scores, never used to select
    assert {r.reported_split for r in rep} == {"test"} and V.majority_score(rep) == pytest.approx(50.9)
    only_val = V.for_claims([_Cfg(1e-3, 0.85)])
    assert only_val[0].main == 0.85 and V.majority_score(only_val) == pytest.approx(52.0)
