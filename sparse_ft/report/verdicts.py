"""The verdict rules of the reproduction report, in one place (every paper section uses them).

A claim about a score difference ("FISH at 0.5% ≈ dense", "FISH beats a random mask", "READ within
a point of LoRA") gets "holds" or "does not hold on this proxy" only when the proxy can tell:

1. the reference (dense fine-tuning of the same model × task) scores at least
   ``MIN_POINTS_ABOVE_MAJORITY`` points above the majority-class score of the evaluation split
   (``data.majority_class_score`` in the runs' summary.json: the best score a constant prediction
   reaches under the task's main metric) and below ``MAX_REFERENCE`` points; a proxy at its floor
   or at its ceiling (the generated NLI task: dense 99.5) cannot tell methods apart;
2. each side has at least ``MIN_SEEDS`` seeds, and
3. the difference the claim is about is larger than the seed noise: the claim "mean(a) − mean(b)
   > threshold" holds when the whole two-sided ``CONFIDENCE`` Welch t-interval of the difference
   of the two means lies above the threshold, does not hold when it lies below it, and is
   undecidable when the interval contains it ("difference within seed noise"), or when both sides
   sit at the majority-class score (within ``AT_FLOOR`` points: two collapsed runs). Paired figures
   (a compressed model's drop against its own source run, one per source seed) use the
   one-sample t-interval of their mean instead (`decide_mean`).

Otherwise the verdict is ``UNDECIDABLE`` and the text says why ("dense only 1.7 points above the
majority class (74.8)", "fewer than 3 seeds (FISH 1, dense 3)", "difference within seed noise").

Memory and time claims are decided only on runs measured alone: ``measurement.comparable`` in
summary.json (own process, no concurrent job); a run that does not record it is of unknown
conditions and so not comparable (``measured_alone``).

Hyper-parameters: a section first keeps, per setting, the lr whose mean validation score is the
best (`select_lr`, the READ paper's rule: the validation split is carved from train with
`task.split_scheme=read`), then reads each run's held-out score (`Reported`: the official dev set
there); `for_claims` does both.

Scores here are in points (×100 where the metric is a fraction; callers pass their scale).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold on this proxy"
UNDECIDABLE = "undecidable on this proxy"
NOT_MEASURABLE = "not measurable here"
VERDICTS = (HOLDS, DOES_NOT_HOLD, UNDECIDABLE, NOT_MEASURABLE)

MIN_POINTS_ABOVE_MAJORITY = 10.0  # the reference must clear the majority-class score by this many points
MAX_REFERENCE = 98.0  # points: a reference at or above this is at the ceiling (a saturated proxy cannot rank methods)
MIN_SEEDS = 3  # per side of a score comparison
CONFIDENCE = 0.95  # two-sided Welch t-interval of the difference of two means
AT_FLOOR = 1.0  # points: two sides both within this of the majority-class score (or below) are not ranked

RULES = (
    f"**Verdict rules** (`sparse_ft/report/verdicts.py`): a score claim gets *{HOLDS}* or *{DOES_NOT_HOLD}* "
    f"only when (1) the dense reference of that model × task scores ≥ {MIN_POINTS_ABOVE_MAJORITY:g} points above "
    f"the majority-class score of the evaluation split (`data.majority_class_score`, the best constant "
    f"prediction under the task's main metric) and below {MAX_REFERENCE:g} (a saturated proxy cannot rank "
    f"methods), (2) every side has ≥ {MIN_SEEDS} seeds, and (3) the "
    f"{100 * CONFIDENCE:g}% Welch t-interval of the difference of the two means lies wholly on one side of the "
    f"claim's threshold, and not both sides sit at the majority-class score (a compressed model against its own source: the one-sample t-interval of the per-seed drop); otherwise *{UNDECIDABLE}*, with the reason. Figures are mean ± sample std over seeds. "
    f"Memory and time claims use only runs measured alone (`measurement.comparable`: own process, no "
    f"concurrent job); runs that do not record this are not comparable."
)


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    std: float  # sample std (0.0 with one value)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def stats(values: Iterable[float | None]) -> Stats | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    return Stats(len(xs), statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch_interval(a: Stats, b: Stats, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided Welch t-interval of mean(a) − mean(b) (needs n ≥ 2 on each side)."""
    from scipy.stats import t as student_t

    d = a.mean - b.mean
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d
    df = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if va else 0.0) + (vb ** 2 / (b.n - 1) if vb else 0.0))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return d - half, d + half


@dataclass(frozen=True)
class Decision:
    verdict: str  # HOLDS | DOES_NOT_HOLD | UNDECIDABLE
    text: str  # the figures and, when undecidable, why

    @property
    def decided(self) -> bool:
        return self.verdict in (HOLDS, DOES_NOT_HOLD)


def reference_gate(reference: Stats | None, majority: float | None, name: str = "dense") -> str | None:
    """Why the proxy cannot tell (None: it can): the reference must clear the majority class."""
    if reference is None:
        return f"no {name} reference run"
    if majority is None:
        return "majority-class score of the evaluation split unknown (no data.majority_class_score in the runs)"
    if reference.mean >= MAX_REFERENCE:
        return f"{name} at the ceiling ({reference.mean:.1f} ≥ {MAX_REFERENCE:g}: the proxy is saturated)"
    above = reference.mean - majority
    if above < MIN_POINTS_ABOVE_MAJORITY:
        return (f"{name} only {above:.1f} points above the majority class ({majority:.2f}; "
                f"needs ≥ {MIN_POINTS_ABOVE_MAJORITY:g})")
    return None


def decide_difference(a: Sequence[float], b: Sequence[float], threshold: float = 0.0, *,
                      reference: Sequence[float] | None = None, majority: float | None = None,
                      names: tuple[str, str] = ("a", "b"), reference_name: str = "dense") -> Decision:
    """Does mean(a) − mean(b) exceed `threshold` (points)? `reference`: the dense scores the
    majority-class gate is applied to (defaults to `b`); `majority`: the majority-class score in
    the same points. "a ≈ b within ε" is `decide_difference(a, b, -ε)`."""
    sa, sb = stats(a), stats(b)
    if sa is None or sb is None:
        missing = names[0] if sa is None else names[1]
        return Decision(UNDECIDABLE, f"no {missing} score")
    ref = stats(reference) if reference is not None else sb
    d = sa.mean - sb.mean
    text = f"{names[0]} {sa} vs {names[1]} {sb}, difference {d:+.2f}"
    reasons = []
    why = reference_gate(ref, majority, reference_name)
    if why:
        reasons.append(why)
    if min(sa.n, sb.n) < MIN_SEEDS:
        reasons.append(f"fewer than {MIN_SEEDS} seeds ({names[0]} {sa.n}, {names[1]} {sb.n})")
    if majority is not None and max(sa.mean, sb.mean) <= majority + AT_FLOOR:
        reasons.append(f"both at the majority-class score ({majority:.2f}): a floor cannot rank them")
    if reasons:
        return Decision(UNDECIDABLE, f"{text}; undecidable: {'; '.join(reasons)}")
    lo, hi = welch_interval(sa, sb)
    text += f" ({100 * CONFIDENCE:g}% CI [{lo:+.2f}, {hi:+.2f}], threshold {threshold:+g})"
    if lo > threshold:
        return Decision(HOLDS, text)
    if hi < threshold:
        return Decision(DOES_NOT_HOLD, text)
    return Decision(UNDECIDABLE, f"{text}; undecidable: difference within seed noise")


def t_interval(s: Stats, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided one-sample t-interval of the mean (needs n ≥ 2)."""
    from scipy.stats import t as student_t

    se = s.std / math.sqrt(s.n)
    if se == 0.0:
        return s.mean, s.mean
    half = float(student_t.ppf(0.5 + confidence / 2, s.n - 1)) * se
    return s.mean - half, s.mean + half


def decide_mean(values: Sequence[float | None], threshold: float, *, below: bool = False,
                name: str = "mean") -> Decision:
    """Is the mean of paired values (one per seed, e.g. a compressed model's drop against its own
    source run) above `threshold` (or, with `below`, at most it)? Decided when there are
    ≥ ``MIN_SEEDS`` values and the one-sample ``CONFIDENCE`` t-interval of their mean lies wholly on
    one side of the threshold; otherwise undecidable, with the reason. The reference gate is the
    caller's (`reference_gate`)."""
    s = stats(values)
    if s is None:
        return Decision(UNDECIDABLE, f"no {name}")
    side = "≤" if below else ">"
    text = f"{name} {s}"
    if s.n < MIN_SEEDS:
        return Decision(UNDECIDABLE, f"{text}; undecidable: fewer than {MIN_SEEDS} seeds ({s.n})")
    lo, hi = t_interval(s)
    text += f" ({100 * CONFIDENCE:g}% CI [{lo:+.2f}, {hi:+.2f}], claim {side} {threshold:g})"
    if (hi <= threshold) if below else (lo > threshold):
        return Decision(HOLDS, text)
    if (lo > threshold) if below else (hi <= threshold):
        return Decision(DOES_NOT_HOLD, text)
    return Decision(UNDECIDABLE, f"{text}; undecidable: within seed noise")


def combine(decisions: Sequence[Decision]) -> str:
    """One verdict for a claim made of several comparisons (every density, every task): does not
    hold if any part does not; holds if every part holds; otherwise undecidable."""
    verdicts = [d.verdict for d in decisions]
    if not verdicts:
        return NOT_MEASURABLE
    if DOES_NOT_HOLD in verdicts:
        return DOES_NOT_HOLD
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    return UNDECIDABLE


def majority_score(runs: Sequence[Any], scale: float = 100.0, split: str | None = None) -> float | None:
    """The majority-class score (in points) of the evaluation split the runs' `main` is computed on
    (`split`; default: a `Reported` run's split, else the first recorded of validation /
    validation_matched), from
    `data.majority_class_score.<split>` recorded at run time; None when no run has it. The runs of
    one model × task share their data, so the first run that has it is taken."""
    for r in runs:
        summary = getattr(r, "summary", None) or {}
        split_r = split or getattr(r, "reported_split", None)
        keys = [split_r] if split_r and split_r != "validation" else ["validation", "validation_matched"]
        scores = (summary.get("data") or {}).get("majority_class_score") or {}
        for key in keys:
            v = scores.get(key)
            if isinstance(v, (int, float)):
                return float(v) * scale
    return None


def _setting_key(run: Any) -> str:
    """Everything that makes a run's setting except its lr and seed (the lr is what the grid searches)."""
    import json

    cfg = getattr(run, "config", None) or {}
    keep = {k: cfg.get(k) for k in ("model", "task", "method", "job", "source")}
    trainer = dict(cfg.get("trainer") or {}) if isinstance(cfg.get("trainer"), dict) else {}
    trainer.pop("lr", None)
    keep["trainer"] = trainer
    return json.dumps([str(run.model), str(run.task), str(run.method), keep], sort_keys=True, default=str)


def select_lr(runs: Sequence[Any]) -> list[Any]:
    """The lr grid's selection (the READ paper's rule): per setting (everything but trainer.lr and
    the seed), keep the runs of the lr whose mean validation main score (`metrics.main`) is the
    highest; ties: more seeds, then the smaller lr. Runs without a score pass through."""
    groups: dict[str, dict[Any, list]] = {}
    out = []
    for r in runs:
        if not getattr(r, "completed", False) or r.main is None:
            out.append(r)
            continue
        lr = ((getattr(r, "config", None) or {}).get("trainer") or {}).get("lr")
        groups.setdefault(_setting_key(r), {}).setdefault(lr, []).append(r)
    for by_lr in groups.values():
        best = min(by_lr.items(), key=lambda kv: (-statistics.fmean(x.main for x in kv[1]), -len(kv[1]),
                                                  kv[0] if isinstance(kv[0], (int, float)) else math.inf))
        out += best[1]
    return out


class Reported:
    """A run whose `main` is the score a claim reports: `metrics.test.main` (with
    `task.split_scheme=read` the official dev set; synthetic tasks: their labelled test split)
    where the run has it, else `metrics.main`; everything else is the run's own."""

    def __init__(self, run: Any):
        self._run = run
        self.reported_split = "test" if run.test_main is not None else "validation"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._run, name)

    @property
    def main(self) -> float | None:
        return self._run.test_main if self._run.test_main is not None else self._run.main

    @property
    def validation_main(self) -> float | None:
        return self._run.main


def for_claims(runs: Sequence[Any]) -> list[Any]:
    """The runs a section's tables and claims read: the lr grid selected on validation
    (`select_lr`), each run's score the held-out one (`Reported`)."""
    return [Reported(r) for r in select_lr(runs)]


def reported_scores(runs: Sequence[Any], scale: float = 1.0) -> tuple[list[float], str]:
    """The scores a claim is decided on, and their split: the held-out test split's main metric
    (`metrics.test.main`; with `task.split_scheme=read` the official dev set, the setting having
    been selected on the validation split carved from train) when every run has it, else
    `metrics.main` on the validation split."""
    tests = [getattr(r, "test_main", None) for r in runs]
    if runs and all(t is not None for t in tests):
        return [t * scale for t in tests], "test"
    return [r.main * scale for r in runs if r.main is not None], "validation"


def dense_reference(runs: Sequence[Any], model: Any, task: Any) -> list[Any]:
    """The completed dense fine-tuning runs of `model` × `task` (the reference of the gate)."""
    from .aggregate import is_dense_method

    return [r for r in runs if getattr(r, "completed", False) and r.main is not None and is_dense_method(r.method)
            and str(r.model) == str(model) and str(r.task) == str(task)]


def controls_line(runs: Sequence[Any], model: Any, task: Any, scale: float) -> str:
    """"majority class X; dense m ± s (n=k), Y points above it" for one model × task."""
    dense = dense_reference(runs, model, task)
    maj = majority_score(dense or [r for r in runs if str(r.model) == str(model) and str(r.task) == str(task)], scale)
    st = stats(r.main * scale for r in dense)
    parts = [f"majority class {'n/a (not recorded)' if maj is None else f'{maj:.2f}'}",
             f"dense {'n/a (no run)' if st is None else st}"]
    if maj is not None and st is not None:
        parts[-1] += f", {st.mean - maj:+.1f} points above it"
    return f"{model}/{task}: " + "; ".join(parts)


def measured_alone(run: Any) -> tuple[bool | None, str]:
    """Were the run's memory and time figures taken alone (its own fresh process, no other job on
    the machine at the same time)? The run's own record, summary.json `measurement.comparable`
    with `why_not`: (True, "measured alone") | (False, why) | (None, why) where it is not recorded
    (a run from before `measurement`). The report's one comparability check."""
    m = (getattr(run, "summary", None) or {}).get("measurement") or {}
    if "comparable" not in m:
        return None, "measurement conditions not recorded (summary.json measurement): not comparable"
    if m["comparable"]:
        return True, "measured alone"
    return False, str(m.get("why_not") or "shared its process or the machine")


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def not_alone_summary(runs: Sequence[Any]) -> tuple[bool | None, str]:
    """`measured_alone` over a row of runs (the seeds of one setting), its reasons counted instead
    of repeated per seed: (True, "") when every run was measured alone; (False, "3 of 3 run(s)
    shared their process (12–14 job(s) before); 3 of 3 ran beside 2 other sparse-ft job(s)");
    (None, why) when some run does not record it."""
    found = [(measured_alone(r), (getattr(r, "summary", None) or {}).get("measurement") or {}) for r in runs]
    shared = [m for (ok, _), m in found if ok is False]
    if shared:
        n, parts, other = len(found), [], set()
        before = [int(m["jobs_before_in_process"]) for m in shared if m.get("jobs_before_in_process")]
        beside = [int(m["concurrent_jobs"]) - 1 for m in shared if int(m.get("concurrent_jobs") or 1) > 1]
        if before:
            parts.append(f"{len(before)} of {n} run(s) shared their process ({_span(before)} job(s) before)")
        if beside:
            parts.append(f"{len(beside)} of {n} ran beside {_span(beside)} other sparse-ft job(s)")
        for (ok, why), m in found:
            if ok is False and not m.get("jobs_before_in_process") and int(m.get("concurrent_jobs") or 1) <= 1:
                other.add(why)
        return False, "; ".join(parts + sorted(other))
    unknown = sorted({why for (ok, why), _m in found if ok is None})
    if unknown:
        return None, "; ".join(unknown)
    return True, ""
