"""READ's section, its measured figures: the runs grouped into cells (one model × task × method,
the runs of its best setting) and the tables built from them (Table 1/3, the memory ratio vs
dense, peak memory vs backbone size). The claims, figures and the section are in `read.py`."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from ..collect import ENERGY_SOURCES, Run
from ..render import fmt_num, md_table
from ..verdicts import not_alone_summary

METHODS = ("dense", "head_only", "bitfit", "prompt_tuning", "ia3", "adapter", "lora", "lst", "read", "read_large")
PETL = ("prompt_tuning", "ia3", "adapter", "lora", "lst", "read", "read_large")
LABELS = {"dense": "Full FT", "head_only": "Head only (control)", "bitfit": "BitFit", "prompt_tuning": "Prompt tuning", "ia3": "(IA)³", "adapter": "Adapter",
          "lora": "LoRA", "lst": "LST", "read": "READ", "read_large": "READ-large"}
GB = 1e9
ESTIMATORS = {"kwh_counter": "GPU energy counter", "kwh_power_integral": "GPU power integral",
              "kwh_util_estimate": "READ utilisation estimate", "cpu_kwh": "CPU RAPL"}


def method_of(run: Run) -> str | None:
    name = str(run.method).lower()
    if name == "read":
        model = run.config.get("model") if isinstance(run.config.get("model"), dict) else {}
        return "read_large" if (model.get("drop_last_layers") or 0) > 0 else "read"
    return name if name in METHODS else None


def _random_init(run: Run) -> bool:
    model = run.config.get("model")
    return bool(model.get("random_init")) if isinstance(model, dict) else False


def _setting(run: Run) -> str:
    trainer = run.config.get("trainer") if isinstance(run.config.get("trainer"), dict) else {}
    return json.dumps([run.config.get("method"), trainer.get("lr")], sort_keys=True, default=str)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _train_energy(run: Run) -> tuple[float | None, str | None]:
    """Training-phase kWh from the best estimator the run has (the run's total when it has no phases)."""
    for src in ENERGY_SOURCES:
        v = run.figure(f"energy.phases.train.{src}")
        if v is not None:
            return v, src
    return run.energy


def _energy_missing(run: Run) -> str:
    reason = run.block("energy").get("reason")
    if not reason:
        return "n/a: no energy figure recorded"
    reason = str(reason)
    if reason.startswith("no GPU") and "RAPL" in reason:
        return "n/a: no GPU and no readable RAPL counter"
    return "n/a: " + (reason if len(reason) <= 60 else reason[:57] + "…")


@dataclass
class Cell:
    """One model × task × method: the runs of its best setting."""

    model: str
    task: str
    method: str
    runs: list[Run] = field(default_factory=list)
    settings: int = 1

    @property
    def scores(self) -> list[float]:
        return [r.main for r in self.runs if r.main is not None]

    @property
    def score(self) -> float | None:
        return _mean(self.scores)

    @property
    def peak(self) -> float | None:
        return _mean(r.peak_train_bytes for r in self.runs)

    @property
    def peak_above_start(self) -> float | None:
        """CPU runs: peak training RSS above the RSS at job start (None if any run lacks it)."""
        vals = [r.peak_train_bytes_above_start for r in self.runs]
        return None if not vals or any(v is None for v in vals) else _mean(vals)

    @property
    def not_alone(self) -> str | None:
        """Why this cell's memory/time figures do not compare (a run shared its process or the
        machine: summary.json `measurement`); None when they do or it was not recorded."""
        ok, why = not_alone_summary(self.runs)
        return why if ok is False else None

    @property
    def random_init(self) -> bool:
        return any(_random_init(r) for r in self.runs)

    def energy(self) -> tuple[float | None, str | None]:
        """Mean training kWh over the runs that share the best estimator any of them has."""
        found = [_train_energy(r) for r in self.runs]
        sources = [s for _, s in found if s is not None]
        if not sources:
            return None, None
        best = min(sources, key=ENERGY_SOURCES.index)
        return _mean(v for v, s in found if s == best), best

    def device(self) -> str:
        devices = sorted({str(r.block("memory").get("device")) for r in self.runs if r.block("memory").get("device")})
        return ", ".join(devices) or "?"


def collect_cells(runs: Sequence[Run]) -> list[Cell]:
    by: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        m = method_of(r)
        if m is None or not r.completed:
            continue
        by.setdefault((str(r.model), str(r.task), m), {}).setdefault(_setting(r), []).append(r)
    cells = []
    for (model, task, method), settings in by.items():
        best = max(settings.values(), key=lambda rs: _mean(r.main for r in rs) if _mean(r.main for r in rs) is not None else -math.inf)
        cells.append(Cell(model, task, method, best, len(settings)))
    cells.sort(key=lambda c: (c.model, c.task, METHODS.index(c.method)))
    return cells


def _scale(cells: Sequence[Cell]) -> float:
    scores = [s for c in cells for s in c.scores]
    return 100.0 if scores and all(abs(s) <= 1.0 for s in scores) else 1.0


def _score_cell(c: Cell, scale: float, held_out: bool = False) -> str:
    """Mean ± std over the seeds of the validation score (the split the setting is selected on), or
    with `held_out` of the held-out test split's (the official dev set under task.split_scheme=read)."""
    s = [r.test_main for r in c.runs if r.test_main is not None] if held_out else c.scores
    if not s:
        return "n/a: no held-out split" if held_out else "n/a: no score"
    if len(s) == 1:
        return fmt_num(s[0] * scale, 1)
    return f"{fmt_num(statistics.fmean(s) * scale, 1)} ± {fmt_num(statistics.stdev(s) * scale, 1)}"


def _energy_cell(c: Cell) -> str:
    v, src = c.energy()
    if v is None:
        return _energy_missing(c.runs[0])
    return f"{v:.3g} ({ESTIMATORS.get(src, src)})"


def _inference_cells(c: Cell) -> tuple[str, str]:
    if not any(r.block("inference") for r in c.runs):
        why = "n/a: not measured (trainer.measure_inference=false)"
        return why, why
    mem = _mean(r.figure("inference.peak_bytes") for r in c.runs)
    lat = _mean(r.figure("inference.latency_ms_median") for r in c.runs)
    return (fmt_num(mem / GB, 2) if mem is not None else "n/a: no peak recorded",
            fmt_num(lat, 1) if lat is not None else "n/a: no latency recorded")


def _trainable(c: Cell) -> str:
    t = _mean(r.figure("params.trainable") for r in c.runs)
    n = _mean(r.figure("params.total") for r in c.runs)
    if t is None or not n:
        return "n/a: not recorded"
    return f"{t / n * 100:.3g}%"


def table_1(cells: Sequence[Cell], scale: float) -> str:
    x100 = " ×100" if scale == 100 else ""
    header = ["model", "task", "method", "runs", f"score (validation{x100}, selects the setting)",
              f"score (held-out: official dev{x100})", "trainable params",
              "train energy (kWh, estimator)", "peak train memory (GB)", "memory measured on",
              "inference peak memory, batch 1 (GB)", "inference latency, batch 1 (ms, median)"]
    rows = []
    for c in cells:
        inf_mem, inf_lat = _inference_cells(c)
        peak = fmt_num(c.peak / GB, 2) if c.peak is not None else "n/a: not recorded"
        if c.peak is not None and c.not_alone:
            peak += " † (not alone: " + c.not_alone + ")"
        model = c.model + (" (random init)" if c.random_init else "")
        rows.append([model, c.task, LABELS[c.method], str(len(c.runs)), _score_cell(c, scale),
                     _score_cell(c, scale, held_out=True), _trainable(c), _energy_cell(c), peak,
                     c.device(), inf_mem, inf_lat])
    return md_table(header, rows, "lllrrrrrrlrr")


def _pairs(cells: Sequence[Cell]) -> dict[tuple, dict[str, Cell]]:
    out: dict[tuple, dict[str, Cell]] = {}
    for c in cells:
        out.setdefault((c.model, c.task), {})[c.method] = c
    return out


def ratio_table(cells: Sequence[Cell]) -> tuple[str, dict[tuple, dict[str, float]]]:
    ratios: dict[tuple, dict[str, float]] = {}
    rows = []
    for (model, task), by in _pairs(cells).items():
        dense = by.get("dense")
        if dense is None or not dense.peak:
            continue
        for method, c in by.items():
            if method == "dense" or c.peak is None:
                continue
            shared = c.not_alone or dense.not_alone
            if shared:  # left out: a process that ran other jobs first, or jobs side by side, do not compare
                rows.append([model, task, LABELS[method], fmt_num(c.peak / GB, 2), fmt_num(dense.peak / GB, 2),
                             "n/a: not comparable (" + "; ".join(
                                 f"{who}: {why}" for who, why in ((LABELS[method], c.not_alone), ("dense", dense.not_alone))
                                 if why) + ")", "", "", c.device()])
                continue
            r = c.peak / dense.peak
            ratios.setdefault((model, task), {})[method] = r
            job = _job_ratio(c, dense)
            rows.append([model, task, LABELS[method], fmt_num(c.peak / GB, 2), fmt_num(dense.peak / GB, 2), f"{r:.2f}", f"{(r - 1) * 100:+.0f}%",
                         f"{job:.2f}" if job is not None else "n/a: GPU or not recorded", c.device()])
    if not rows:
        return "_No model × task has a dense run beside a PETL run with peak training memory: no ratio._", ratios
    header = ["model", "task", "method", "peak train memory (GB)", "dense's (GB)", "ratio to dense", "vs dense",
              "ratio above the runtime's RSS (CPU)", "measured on"]
    return md_table(header, rows, "lllrrrrrl"), ratios


def _job_ratio(c: Cell, dense: Cell) -> float | None:
    """CPU: the ratio of what each job added to the process (peak RSS minus RSS at job start), which
    leaves out the interpreter and libraries that a GPU allocator's peak never counts."""
    a, b = c.peak_above_start, dense.peak_above_start
    return a / b if a is not None and b else None


def _where(c: Cell) -> str:
    seeds = len(c.runs)
    return f"{c.model}{' (random init, real shapes)' if c.random_init else ''} × {c.task}, {seeds} seed{'s' if seeds != 1 else ''}"


def _size_points(cells: Sequence[Cell]) -> dict[str, dict[str, list[tuple[float, float, str]]]]:
    """task -> method -> [(backbone parameters, peak training bytes, model)] over the T5 sizes that
    have a dense run measured alone beside them (the memory-vs-size curve; cells not measured
    alone are left out). On CPU the peak is the one above the RSS at job start (what the job
    added: the figure comparable to a GPU allocator's peak)."""
    out: dict[str, dict[str, list]] = {}
    mem = lambda c: c.peak_above_start if c.peak_above_start is not None else c.peak  # noqa: E731
    for (model, task), by in _pairs(cells).items():
        dense = by.get("dense")
        if "t5" not in model.lower() or dense is None or not mem(dense) or dense.not_alone:
            continue
        for method, c in by.items():
            size = _mean(r.figure("params.total") for r in c.runs)
            if mem(c) is None or c.not_alone or not size:
                continue
            out.setdefault(task, {}).setdefault(method, []).append((size, mem(c), model))
    return {t: {m: sorted(v) for m, v in by.items()} for t, by in out.items()
            if len({s for s, _, _ in by.get("dense", [])}) >= 2}


def size_table(cells: Sequence[Cell]) -> str | None:
    """Peak training memory and its ratio to dense at each T5 size (None below two sizes)."""
    points = _size_points(cells)
    if not points:
        return None
    rows = []
    for task, by in points.items():
        dense = {model: peak for _, peak, model in by["dense"]}
        for size, _, model in by["dense"]:
            cells_ = []
            for method in ("dense", *[m for m in METHODS if m in by and m != "dense"]):
                found = [p for s, p, m in by[method] if m == model]
                cells_.append(f"{fmt_num(found[0] / GB, 2)} ({found[0] / dense[model]:.2f})" if found else "n/a: no run")
            rows.append([model, task, fmt_num(size / 1e6, 1), *cells_])
        methods = ("dense", *[m for m in METHODS if m in by and m != "dense"])
    header = ["model", "task", "parameters (M)", *[f"{LABELS[m]}: GB (ratio to dense)" for m in methods]]
    return md_table(header, rows, "llr" + "r" * len(methods))
