"""Essential Sparsity's section, its measured data: the score-drop curves of one-shot magnitude
pruning with the essential sparsity and knee read off each (`essential_and_knee`), and the IMP
rounds' mask cosines to the OMP mask. The figures, claims and the section are in `essential.py`,
whose docstring states the definitions."""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..aggregate import is_dense_method
from ..collect import Run

log = logging.getLogger(__name__)

EPSILON = 1.0          # points of the task metric (×100 scale)
SPARSITY_BIN = 1e-3    # measured sparsities closer than this are one grid point


# ----------------------------------------------------------------------------- curves
@dataclass
class Point:
    sparsity: float               # measured, fraction (mean over the runs of this point)
    scores: list[float]           # raw main scores (fraction or the task's own scale)
    target: float | None = None   # configured sparsity (shown beside the measured one only)

    @property
    def score(self) -> float:
        return statistics.fmean(self.scores)


@dataclass
class Curve:
    model: Any
    task: Any
    series: str                     # e.g. "magnitude", "fisher", "magnitude, 2:4"
    criterion: str                  # magnitude | fisher
    structured: bool                # N:M pattern
    scope: str
    random_init: bool               # the model's weights were random: scores at chance, no verdict
    scale: float
    dense: list[float]              # dense (s = 0) scores
    points: list[Point] = field(default_factory=list)  # pruned points (s > 0), sorted by s
    seeds: set = field(default_factory=set)

    @property
    def dense_score(self) -> float | None:
        return statistics.fmean(self.dense) if self.dense else None

    def drop(self, p: Point) -> float | None:
        d = self.dense_score
        return None if d is None else (d - p.score) * self.scale

    def all_points(self) -> list[tuple[float, float | None]]:
        """(sparsity, drop in points) including s = 0 (drop 0 by definition)."""
        out = [(0.0, 0.0)] if self.dense else []
        return out + [(p.sparsity, self.drop(p)) for p in self.points]

    @property
    def measurable(self) -> bool:
        return bool(self.dense) and bool(self.points)

    @property
    def judged(self) -> bool:
        """Measurable and of a pretrained model: what the figure draws and the claims judge."""
        return self.measurable and not self.random_init


def essential_and_knee(points: Sequence[tuple[float, float]], epsilon: float = EPSILON) -> tuple[float | None, float | None]:
    """(essential sparsity, knee) of a drop curve given as (measured sparsity, drop in points).

    ES: the largest s with drop ≤ ε such that every smaller s is within ε too; knee: the first s
    whose drop exceeds ε (None when none does). Both None for an empty curve."""
    pts = sorted((float(s), float(d)) for s, d in points if d is not None)
    es = knee = None
    for s, d in pts:
        if d <= epsilon + 1e-9:
            es = s
        else:
            knee = s
            break
    return es, knee


def _score_scale(runs: Sequence[Run]) -> float:
    scores = [r.main for r in runs if r.main is not None]
    return 100.0 if scores and all(abs(v) <= 1.0 for v in scores) else 1.0


def _opt(run: Run, key: str, default: Any) -> Any:
    v = (run.config.get("method") or {}).get(key) if isinstance(run.config.get("method"), dict) else None
    return default if v in (None, "") else v


def _series_of(run: Run) -> tuple[str, bool, str]:
    criterion = str(_opt(run, "score", "magnitude"))
    pattern = str(_opt(run, "pattern", "unstructured"))
    scope = str(_opt(run, "scope", "global"))
    structured = pattern != "unstructured"
    parts = [criterion] + ([pattern] if structured else []) + ([f"scope={scope}"] if scope != "global" else [])
    return ", ".join(parts), structured, scope


def random_init(run: Run) -> bool:
    """A run of a randomly initialised model (`model.random_init`): its scores mean nothing."""
    model = run.config.get("model")
    return bool(model.get("random_init")) if isinstance(model, dict) else False


def _is_omp(run: Run) -> bool:
    return str(run.method).lower() == "omp"


def _is_imp(run: Run) -> bool:
    return str(run.method).lower() in ("imp", "lth")


def build_curves(runs: Sequence[Run]) -> list[Curve]:
    """One curve per model × task × series from completed OMP and dense runs."""
    done = [r for r in runs if r.completed and r.main is not None]
    omp = [r for r in done if _is_omp(r) and r.sparsity is not None]
    scale = _score_scale([r for r in done if _is_omp(r) or is_dense_method(r.method)])
    dense: dict[tuple, list[Run]] = {}  # (model, task, random init) → runs at s = 0
    for r in done:
        if is_dense_method(r.method):
            dense.setdefault((str(r.model), str(r.task), random_init(r)), []).append(r)
    for r in omp:  # OMP at measured sparsity 0 is the dense model fine-tuned
        if r.sparsity < SPARSITY_BIN / 2:
            dense.setdefault((str(r.model), str(r.task), random_init(r)), []).append(r)
    grouped: dict[tuple, list[Run]] = {}
    for r in omp:
        if r.sparsity >= SPARSITY_BIN / 2:
            series, structured, scope = _series_of(r)
            grouped.setdefault((str(r.model), str(r.task), random_init(r), series, structured, scope), []).append(r)
    # a model × task whose OMP runs are all at s = 0 still gets a (non-measurable) curve
    for mt in {(str(r.model), str(r.task), random_init(r)) for r in omp}:
        if not any(k[:3] == mt for k in grouped):
            grouped[(*mt, "magnitude", False, "global")] = []
    curves = []
    for (model, task, rand, series, structured, scope), rs in sorted(grouped.items(), key=lambda kv: tuple(map(str, kv[0]))):
        base = dense.get((model, task, rand), [])
        c = Curve(model, task, series, series.split(",")[0], structured, scope, rand, scale, [b.main for b in base],
                  seeds={r.seed for r in [*rs, *base]})
        bins: list[list[Run]] = []
        for r in sorted(rs, key=lambda r: r.sparsity):
            if bins and r.sparsity - bins[-1][0].sparsity < SPARSITY_BIN:
                bins[-1].append(r)
            else:
                bins.append([r])
        for b in bins:
            targets = [_opt(r, "sparsity", None) for r in b]
            targets = [float(t) for t in targets if isinstance(t, (int, float))]
            c.points.append(Point(statistics.fmean(r.sparsity for r in b), [r.main for r in b],
                                  statistics.fmean(targets) if targets else None))
        curves.append(c)
    return curves


# ----------------------------------------------------------------------------- IMP masks
@dataclass
class CosinePoint:
    model: Any
    task: Any
    seed: Any
    round: int
    sparsity: float
    cosine: float
    path: Path
    trivial: bool = False  # a dense round, or round 0 without dense_first (the OMP mask): cosine 1 by construction
    random_init: bool = False  # of a random-init model: no verdict from it
    random: float | None = None  # the floor: a random mask's cosine to OMP at this sparsity

    @property
    def floor(self) -> float:
        """The random mask's cosine (measured; else its expectation, the density 1 − s)."""
        return self.random if self.random is not None else 1.0 - self.sparsity


def imp_cosines(runs: Sequence[Run]) -> list[CosinePoint]:
    """Every IMP round's mask cosine to OMP, from `masks/rounds.json` (else the summary's
    `method_report.rounds`)."""
    out = []
    for r in runs:
        if not _is_imp(r):
            continue
        rounds = None
        f = Path(r.path) / "masks" / "rounds.json"
        if f.is_file():
            try:
                rounds = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", f, exc)
        if not isinstance(rounds, list):
            rounds = ((r.summary or {}).get("method_report") or {}).get("rounds")
        dense_first = bool((r.config.get("method") or {}).get("dense_first", False)) if isinstance(r.config.get("method"), dict) else False
        for item in rounds if isinstance(rounds, list) else []:
            if not isinstance(item, dict):
                continue
            s, c = item.get("sparsity"), item.get("omp_mask_cosine")
            if isinstance(s, (int, float)) and isinstance(c, (int, float)) and math.isfinite(c):
                index = int(item.get("round", len(out)))
                rnd = item.get("random_mask_cosine")
                rnd = float(rnd) if isinstance(rnd, (int, float)) and math.isfinite(rnd) else None
                out.append(CosinePoint(r.model, r.task, r.seed, index, float(s), float(c), Path(r.path),
                                       (index == 0 and not dense_first) or float(s) <= 0.0, random_init(r), rnd))
    return out


def _cosine_rows(points: Sequence[CosinePoint]) -> list[tuple[str, str, float, float, float, int]]:
    """(model, task, sparsity, mean cosine, mean random-mask floor, n runs) per model × task × rounded sparsity."""
    groups: dict[tuple, list[CosinePoint]] = {}
    for p in points:
        groups.setdefault((str(p.model), str(p.task), round(p.sparsity, 3)), []).append(p)
    return [(m, t, statistics.fmean(p.sparsity for p in g), statistics.fmean(p.cosine for p in g), statistics.fmean(p.floor for p in g), len(g))
            for (m, t, _), g in sorted(groups.items())]
