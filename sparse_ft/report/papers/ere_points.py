"""ERE's section, its measured data: one `Point` per compress run (its score beside the source
run's, the artifact's storage and the compressor's options), read from the compress runs and
their source runs, and one `Setting` per compressor setting over its source runs (one point per
source seed: mean ± std, and whether its drop is within 1 point beyond the seed noise). The
analysis, claims, tables, figure and the section are in `ere.py`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..collect import Run, as_number, load_run, run_at
from ..render import fmt_num
from ..verdicts import Decision, Stats, decide_mean, stats

METHODS = ("ere", "bitq", "lra")
LABELS = {"ere": "ERE", "bitq": "BITQ", "lra": "LRA"}
TOLERANCE = 1.0  # points: "within 1 point of the uncompressed score"


@dataclass
class Point:
    """One compress run beside its source run; scores in points (0–100 where the metric is 0–1)."""

    run: Run
    method: str
    model: Any
    task: Any
    source: str  # the source run's path as the compress run names it
    source_seed: Any
    rank: float | None  # ERE: rank prior r; LRA: its one rank
    bits: float | None  # ERE: bits of U, V; BITQ: bits per entry; LRA: 16 or 32 (fp factors)
    budget_fraction: float | None
    extra: str  # other non-default options, e.g. "alpha=0.2"
    storage_pct: float | None
    artifact_bytes: float | None
    score: float | None
    source_score: float | None
    f1: float | None
    source_f1: float | None
    seconds: float | None  # the compress phase's wall seconds
    n_eval: float | None = None  # validation examples the score is measured on
    agreement: float | None = None  # share of validation examples whose prediction matches θ''s (summary `fidelity`)
    kl: float | None = None  # mean KL(p_θ' ‖ p_reconstruction), nats
    majority: float | None = None  # majority-class score of the validation split (points, scaled like score)

    @property
    def drop(self) -> float | None:
        return None if self.score is None or self.source_score is None else self.source_score - self.score

    @property
    def f1_drop(self) -> float | None:
        return None if self.f1 is None or self.source_f1 is None else self.source_f1 - self.f1

    @property
    def worst_drop(self) -> float | None:
        """The larger of the main-score and F1 drops (the one the 1-point rule checks)."""
        drops = [d for d in (self.drop, self.f1_drop) if d is not None]
        return max(drops) if drops else None

    @property
    def within(self) -> bool:
        return self.worst_drop is not None and self.worst_drop <= TOLERANCE + 1e-9

    @property
    def group(self) -> tuple:
        return (str(self.model), str(self.task))

    @property
    def setting(self) -> str:
        parts = []
        if self.method == "ere":
            parts.append(f"r={fmt_int(self.rank)}" if self.rank is not None else f"budget={fmt_num(self.budget_fraction)}")
            parts.append(f"b={fmt_int(self.bits)}")
        elif self.method == "bitq":
            parts.append(f"b={fmt_int(self.bits)}")
        else:
            parts.append(f"r={fmt_int(self.rank)}")
            if self.bits == 32:
                parts.append("fp32")
        if self.extra:
            parts.append(self.extra)
        return ", ".join(parts)


def fmt_int(value: float | None) -> str:
    if value is None:
        return "—"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def fmt_pct(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}%" if value < 10 else f"{value:.1f}%"


# ----------------------------------------------------------------------------- reading runs
def _is_compress_run(run: Run) -> bool:
    job = (run.summary or {}).get("job") or run.config.get("job")
    return run.completed and str(run.method) in METHODS and job == "compress"


def _metric(summary: dict | None, *keys: str) -> float | None:
    node: Any = summary or {}
    for k in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(k)
    return as_number(node)


def _f1(summary: dict | None) -> float | None:
    return _metric(summary, "metrics", "validation", "f1") if _metric(summary, "metrics", "f1") is None \
        else _metric(summary, "metrics", "f1")


def _find_source(path: str, runs: Sequence[Run], cache: dict) -> Run | None:
    """The source run: among `runs` by resolved path (then by folder name), else loaded from disk."""
    if path in cache:
        return cache[path]
    found, p = run_at(path, runs), Path(path)
    if found is None and p.is_dir() and (p / "summary.json").is_file():
        found = load_run(p)
    if found is None:
        same_name = [r for r in runs if Path(r.path).name == p.name and not _is_compress_run(r)]
        found = same_name[0] if len(same_name) == 1 else None
    cache[path] = found if found is not None and found.completed else None
    return cache[path]


def _storage(run: Run) -> tuple[float | None, float | None]:
    """(artifact bytes, % of dense fp32) of the compressed artifact."""
    s = run.summary or {}
    storage = s.get("storage") if isinstance(s.get("storage"), dict) else {}
    report = s.get("method_report") if isinstance(s.get("method_report"), dict) else {}
    dense = as_number(storage.get("dense_fp32_bytes")) or as_number(report.get("dense_fp32_bytes"))
    artifacts = storage.get("artifacts") if isinstance(storage.get("artifacts"), dict) else {}
    name = report.get("artifact") or f"{run.method}.safetensors"
    entry = artifacts.get(name) if isinstance(artifacts.get(name), dict) else None
    size = as_number(entry.get("bytes")) if entry else None
    if size is None:
        size = as_number((report.get("bytes") or {}).get("total")) if isinstance(report.get("bytes"), dict) else None
    if size is not None and dense:
        return size, 100.0 * size / dense
    ratio = run.storage_ratio_min
    return size, None if ratio is None else 100.0 * ratio


def _options(run: Run) -> tuple[float | None, float | None, float | None, str]:
    m = run.config.get("method") if isinstance(run.config.get("method"), dict) else {}
    method = str(run.method)
    extra = []
    if method == "ere":
        rank, bits, frac = as_number(m.get("rank_prior")), as_number(m.get("bits")), as_number(m.get("budget_fraction"))
        if as_number(m.get("alpha")) not in (None, 0.5):
            extra.append(f"α={m.get('alpha')}")
        if m.get("stiefel") is False:
            extra.append("no Stiefel")
        return rank, bits, frac, ", ".join(extra)
    if method == "bitq":
        if m.get("axis") not in (None, "row"):
            extra.append(f"per-{m.get('axis')}")
        return None, as_number(m.get("bits")), None, ", ".join(extra)
    dtype = str(m.get("dtype") or "float16")
    return as_number(m.get("rank")), 32.0 if dtype == "float32" else 16.0, None, ""


def collect_points(runs: Sequence[Run]) -> list[Point]:
    cache: dict = {}
    points = []
    for run in runs:
        if not _is_compress_run(run):
            continue
        s = run.summary or {}
        src_block = s.get("source") if isinstance(s.get("source"), dict) else {}
        src_path = str(src_block.get("path") or run.config.get("source") or "")
        src = _find_source(src_path, runs, cache) if src_path else None
        source_main = src.main if src is not None and src.main is not None else as_number(src_block.get("main"))
        rank, bits, frac, extra = _options(run)
        size, pct = _storage(run)
        points.append(Point(
            run=run, method=str(run.method), model=run.model, task=run.task, source=src_path,
            source_seed=src.seed if src is not None else run.seed, rank=rank, bits=bits, budget_fraction=frac,
            extra=extra, storage_pct=pct, artifact_bytes=size, score=run.main, source_score=source_main,
            f1=_f1(s), source_f1=_f1(src.summary) if src is not None else None,
            seconds=run.figure("time.wall_s.compress"), n_eval=run.figure("data.validation"),
            agreement=run.figure("fidelity.agreement"), kl=run.figure("fidelity.kl_mean"),
            majority=run.figure("data.majority_class_score.validation"),
        ))
    # points: ×100 where every score is a 0–1 fraction
    values = [v for p in points for v in (p.score, p.source_score, p.f1, p.source_f1) if v is not None]
    scale = 100.0 if values and all(abs(v) <= 1.0 for v in values) else 1.0
    for p in points:
        for attr in ("score", "source_score", "f1", "source_f1", "majority"):
            v = getattr(p, attr)
            setattr(p, attr, None if v is None else v * scale)
    order = {m: i for i, m in enumerate(METHODS)}
    points.sort(key=lambda p: (p.group, order[p.method], math.inf if p.storage_pct is None else p.storage_pct,
                               p.setting))
    return points


# ----------------------------------------------------------------------------- settings over sources
@dataclass
class Setting:
    """One compressor setting of one model/task over its source runs (one `Point` per source, e.g.
    the dense fine-tunes of seeds 1, 2, 3). Figures are means over the sources; the drop is paired
    (each compressed model against its own source)."""

    points: list[Point]

    @property
    def first(self) -> Point:
        return self.points[0]

    method = property(lambda self: self.first.method)
    group = property(lambda self: self.first.group)
    setting = property(lambda self: self.first.setting)
    rank = property(lambda self: self.first.rank)
    bits = property(lambda self: self.first.bits)
    budget_fraction = property(lambda self: self.first.budget_fraction)
    extra = property(lambda self: self.first.extra)

    @property
    def n(self) -> int:
        return len(self.points)

    def _mean(self, attr: str) -> float | None:
        st = stats(getattr(p, attr) for p in self.points)
        return None if st is None else st.mean

    storage_pct = property(lambda self: self._mean("storage_pct"))
    artifact_bytes = property(lambda self: self._mean("artifact_bytes"))
    score = property(lambda self: self._mean("score"))
    source_score = property(lambda self: self._mean("source_score"))
    f1 = property(lambda self: self._mean("f1"))
    source_f1 = property(lambda self: self._mean("source_f1"))
    agreement = property(lambda self: self._mean("agreement"))
    kl = property(lambda self: self._mean("kl"))
    seconds = property(lambda self: self._mean("seconds"))
    n_eval = property(lambda self: self._mean("n_eval"))
    majority = property(lambda self: self._mean("majority"))

    def values(self, attr: str) -> list[float]:
        return [v for v in (getattr(p, attr) for p in self.points) if v is not None]

    def spread(self, attr: str) -> Stats | None:
        return stats(self.values(attr))

    drop = property(lambda self: self._mean("drop"))
    f1_drop = property(lambda self: self._mean("f1_drop"))
    worst_drop = property(lambda self: self._mean("worst_drop"),
                          doc="The mean over sources of each source's larger drop (main or F1).")

    @property
    def within(self) -> bool:
        """Within 1 point on the mean (the tables' point estimate; the verdicts use `decision`)."""
        return self.worst_drop is not None and self.worst_drop <= TOLERANCE + 1e-9

    @property
    def decision(self) -> Decision:
        """Is the drop (worse of main and F1, paired per source) at most 1 point beyond the seed
        noise? report.verdicts.decide_mean: ≥ 3 sources and the t-interval of the mean drop wholly
        at or below 1 (holds) or above it (does not hold)."""
        return decide_mean(self.values("worst_drop"), TOLERANCE, below=True, name="drop")


def collect_settings(points: Sequence[Point]) -> list[Setting]:
    """The points grouped by model/task, method and setting, in the points' order (storage)."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.group, p.method, p.setting), []).append(p)
    out = [Setting(ps) for ps in groups.values()]
    order = {m: i for i, m in enumerate(METHODS)}
    out.sort(key=lambda st: (st.group, order[st.method], math.inf if st.storage_pct is None else st.storage_pct,
                             st.setting))
    return out


def by(items: Sequence, *, method: str | None = None, group: tuple | None = None) -> list:
    """The points or settings of one method and/or one model/task."""
    return [p for p in items if (method is None or p.method == method) and (group is None or p.group == group)]


def groups_of(items: Sequence) -> list[tuple]:
    """The (model, task) groups, in order of appearance."""
    return list(dict.fromkeys(p.group for p in items))
