"""READ (papers/read.txt, METHODS.md §4): a recurrent side network over a frozen backbone, against
full fine-tuning and the PETL baselines, on score, energy and memory.

Runs: `method=read` (READ-large: `model.drop_last_layers` > 0) beside `dense`, `bitfit`,
`prompt_tuning`, `ia3`, `adapter`, `lora`, `lst`. A table row is one model × task × method; when a
method ran under several settings (its `method.*` options and `trainer.lr`), the row is the
setting with the best mean validation score (the paper's selection), averaged over its seeds.

* Table 1/3 columns: score (the task's main metric, ×100 where it is a fraction), energy in kWh
  with the estimator that produced it (`kwh_counter` = GPU energy counter, `kwh_power_integral`
  = sampled power integrated, `kwh_util_estimate` = READ's Appendix-D utilisation estimate,
  `cpu_kwh` = CPU RAPL), peak training memory in GB (10⁹ bytes; on CPU the process's peak
  resident set, on GPU the allocator's peak), inference peak memory and median latency at batch
  size 1 where the run measured them (`trainer.measure_inference=true`). A missing figure reads
  "n/a: <why>", never 0.
* Memory ratio vs dense: each method's mean peak training memory / dense's on the same
  model × task. Random-init models of real shapes count (memory does not depend on the weights).
* Figure 1: energy (kWh) vs score, one point per method (a panel per model × task), drawn when
  any run has an energy figure; beside it the same with peak training memory, which CPU runs
  always have.

Claims (verdicts from the runs alone):

* memory −56% vs full fine-tuning (T5-base, GPU): holds when READ's peak training memory is at
  most 0.5× dense's (the project's target; the paper's 0.44) on every model × task with both;
* energy −84% vs full fine-tuning (GPU): the same rule on training energy from the same
  estimator; not measurable where READ or dense has no energy figure (the reason is given);
* accuracy comparable to LoRA / adapters / BitFit at far lower memory: holds when READ's score is
  within `COMPARABLE` points of the best of them (report.verdicts: dense ≥ 10 points above the
  majority class, ≥ 3 seeds, the interval of READ − best above −COMPARABLE; scores on the test
  split where the runs have one, i.e. the official dev set under `task.split_scheme=read`, the
  setting selected on validation) and its peak memory below each, on every pretrained (not
  random-init) model × task with READ and at least one of them.

Memory figures decide a claim only when every run involved was measured alone
(report.verdicts.measured_alone); otherwise the claim is "undecidable on this proxy".
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..collect import ENERGY_SOURCES, Run, training_runs
from ..render import fmt_num, md_table
from ..verdicts import UNDECIDABLE, combine, decide_difference, majority_score, measured_alone, reported_scores
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section

log = logging.getLogger(__name__)

PAPER = "READ"
METHODS = ("dense", "head_only", "bitfit", "prompt_tuning", "ia3", "adapter", "lora", "lst", "read", "read_large")
PETL = ("prompt_tuning", "ia3", "adapter", "lora", "lst", "read", "read_large")
LABELS = {"dense": "Full FT", "head_only": "Head only (control)", "bitfit": "BitFit", "prompt_tuning": "Prompt tuning", "ia3": "(IA)³", "adapter": "Adapter",
          "lora": "LoRA", "lst": "LST", "read": "READ", "read_large": "READ-large"}
BASELINES = ("lora", "adapter", "bitfit")  # the accuracy claim's comparison
RATIO_TARGET = 0.5    # READ / dense at most this: memory (paper 0.44) and energy (paper 0.16)
COMPARABLE = 1.0      # score points (×100 scale) READ may trail the best baseline and still be "comparable"
GB = 1e9
ESTIMATORS = {"kwh_counter": "GPU energy counter", "kwh_power_integral": "GPU power integral",
              "kwh_util_estimate": "READ utilisation estimate", "cpu_kwh": "CPU RAPL"}
FIGURE_ENERGY = "read_energy_vs_score.png"
FIGURE_MEMORY = "read_memory_vs_score.png"
FIGURE_SIZE = "read_memory_vs_size.png"  # Figure 4 (right): peak training memory vs backbone size
_COLOURS = {"dense": "tab:gray", "head_only": "tab:brown", "bitfit": "tab:olive", "prompt_tuning": "tab:pink", "ia3": "tab:cyan", "adapter": "tab:green",
            "lora": "tab:orange", "lst": "tab:purple", "read": "tab:blue", "read_large": "tab:red"}


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
        why = sorted({w for ok, w in (r.measured_alone for r in self.runs) if ok is False})
        return "; ".join(why) if why else None

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


def _score_cell(c: Cell, scale: float) -> str:
    s = c.scores
    if not s:
        return "n/a: no score"
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
    header = ["model", "task", "method", "runs", f"score{' (×100)' if scale == 100 else ''}", "trainable params",
              "train energy (kWh, estimator)", "peak train memory (GB)", "memory measured on",
              "inference peak memory, batch 1 (GB)", "inference latency, batch 1 (ms, median)"]
    rows = []
    for c in cells:
        inf_mem, inf_lat = _inference_cells(c)
        peak = fmt_num(c.peak / GB, 2) if c.peak is not None else "n/a: not recorded"
        if c.peak is not None and c.not_alone:
            peak += " † (not alone: " + c.not_alone + ")"
        model = c.model + (" (random init)" if c.random_init else "")
        rows.append([model, c.task, LABELS[c.method], str(len(c.runs)), _score_cell(c, scale), _trainable(c), _energy_cell(c), peak,
                     c.device(), inf_mem, inf_lat])
    return md_table(header, rows, "lllrrrrrlrr")


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
                             f"n/a: not comparable ({'dense: ' if dense.not_alone else ''}{shared})", "", "", c.device()])
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


# --- claims -------------------------------------------------------------------------------------


def _where(c: Cell) -> str:
    seeds = len(c.runs)
    return f"{c.model}{' (random init, real shapes)' if c.random_init else ''} × {c.task}, {seeds} seed{'s' if seeds != 1 else ''}"


@dataclass
class _Verdict:
    verdict: str


def _not_alone(cells: Sequence[Cell]) -> str | None:
    """Why these cells' memory figures are not comparable (report.verdicts.measured_alone), or None."""
    for c in cells:
        for r in c.runs:
            ok, why = measured_alone(r)
            if not ok:
                return f"{LABELS.get(c.method, c.method)}: {why}"
    return None


def memory_claim(cells: Sequence[Cell]) -> Claim:
    found, shared = [], []
    pairs = _pairs(cells)
    # the claim is about T5-base: where T5 pairs exist, they decide (other models are shown in the table)
    t5 = {k: v for k, v in pairs.items() if "t5" in str(k[0]).lower()}
    t5_base = {k: v for k, v in t5.items() if "t5_base" in str(k[0]).lower()}  # other sizes: the memory-vs-size table
    for (_, _), by in (t5_base or t5 or pairs).items():
        read, dense = by.get("read"), by.get("dense")
        if read and dense and read.peak and dense.peak:
            if read.not_alone or dense.not_alone:
                shared.append(read.not_alone or dense.not_alone)
                continue
            found.append((read.peak / dense.peak, read, dense))
    claim = "READ's peak training memory vs full fine-tuning (T5-base, GPU)"
    if not found and shared:
        return Claim(PAPER, claim, "−56%", "n/a: the READ and dense runs were not measured alone (" + "; ".join(sorted(set(shared)))
                     + "): rerun them with python -m sparse_ft.jobs.each_process", NOT_MEASURABLE)
    if not found:
        return Claim(PAPER, claim, "−56%", "n/a: no model × task with both a READ and a dense run that recorded peak training memory", NOT_MEASURABLE)
    parts, judged = [], []
    for r, read, dense in found:
        job = _job_ratio(read, dense)
        text = f"{(r - 1) * 100:+.0f}% (ratio {r:.2f}; peak {'RSS' if read.device() == 'cpu' else 'memory'} on {read.device()}, {_where(read)})"
        if job is not None:  # the verdict uses the figure comparable to a GPU's
            text += f"; above the runtime's RSS at job start: {(job - 1) * 100:+.0f}% (ratio {job:.2f})"
        parts.append(text)
        judged.append(job if job is not None else r)
    ours = "; ".join(parts)
    ok = all(r <= RATIO_TARGET for r in judged)
    why = _not_alone([c for _, read, dense in found for c in (read, dense)])
    if why:  # report.verdicts: memory is decided only on runs measured alone
        return Claim(PAPER, claim, "−56%", f"{ours}; undecidable: {why}", UNDECIDABLE)
    return Claim(PAPER, claim, "−56%", ours, HOLDS if ok else DOES_NOT_HOLD)


def energy_claim(cells: Sequence[Cell]) -> Claim:
    claim = "READ's GPU energy vs full fine-tuning"
    found, missing = [], []
    for (_, _), by in _pairs(cells).items():
        read, dense = by.get("read"), by.get("dense")
        if not (read and dense):
            continue
        (rv, rs), (dv, ds) = read.energy(), dense.energy()
        if rv is None or dv is None or rs != ds or not dv:
            why = _energy_missing((read if rv is None else dense).runs[0]) if rv is None or dv is None else \
                f"n/a: READ's and dense's energy come from different estimators ({rs}, {ds})"
            missing.append(f"{why} ({_where(read)})")
            continue
        found.append((rv / dv, rs, read))
    if not found:
        ours = "; ".join(missing) or "n/a: no model × task with both a READ and a dense run"
        return Claim(PAPER, claim, "−84%", ours, NOT_MEASURABLE)
    ours = "; ".join(f"{(r - 1) * 100:+.0f}% (training energy, {ESTIMATORS.get(src, src)}{'' if src != 'cpu_kwh' else ', CPU not GPU'}, {_where(read)})"
                     for r, src, read in found)
    ok = all(r <= RATIO_TARGET for r, _, _ in found)
    return Claim(PAPER, claim, "−84%", ours, HOLDS if ok else DOES_NOT_HOLD)


def accuracy_claim(cells: Sequence[Cell], scale: float) -> Claim:
    claim = "READ's accuracy is comparable to LoRA / adapters / BitFit at far lower training memory"
    paper_value = "GLUE avg within ~1 point of them, less memory than each (T5-base)"
    parts, oks, skipped = [], [], []
    pairs = _pairs(cells)
    # memory from the T5 runs where there are any (the paper's model, run one process per method);
    # CPU figures above the runtime's RSS at job start where recorded
    t5 = [by for k, by in pairs.items() if "t5" in str(k[0]).lower() and "read" in by]
    mem_of = lambda c: c.peak_above_start if c.peak_above_start is not None else c.peak  # noqa: E731
    for (_, _), by in pairs.items():
        read = by.get("read")
        others = [by[m] for m in BASELINES if m in by and by[m].score is not None]
        if read is None or read.score is None or not others:
            continue
        if read.random_init or any(o.random_init for o in others):
            skipped.append(_where(read))
            continue
        best = max(others, key=lambda o: o.score)  # selected on the validation split
        (rs, split), (bs, _) = reported_scores(read.runs, scale), reported_scores(best.runs, scale)
        dense = by.get("dense")
        decision = decide_difference(rs, bs, -COMPARABLE, reference=reported_scores(dense.runs, scale)[0] if dense else None,
                                     majority=majority_score(read.runs + best.runs, scale, split), names=("READ", LABELS[best.method]))
        gap = statistics.fmean(rs) - statistics.fmean(bs)
        mem_by = t5[0] if t5 else by
        mread, mothers = mem_by.get("read"), [mem_by[o.method] for o in others if o.method in mem_by]
        mem_lower = (mread is not None and mem_of(mread) is not None and len(mothers) >= 1  # BitFit has no T5 run (no biases)
                     and all(mem_of(o) is not None and mem_of(mread) < mem_of(o) for o in mothers))
        mems = ", ".join(f"{LABELS[o.method]} {fmt_num(mem_of(o) / GB, 2) if mem_of(o) else 'n/a'}" for o in mothers) or "n/a"
        where_mem = f"memory on {_where(mread)}" if mread is not None and mem_by is not by else "same runs"
        parts.append(f"READ {fmt_num(statistics.fmean(rs), 1)} vs best {LABELS[best.method]} {fmt_num(statistics.fmean(bs), 1)} on {split} "
                     f"({gap:+.1f} points, {_where(read)}; {decision.text}); peak training memory READ "
                     f"{fmt_num(mem_of(mread) / GB, 2) if mread is not None and mem_of(mread) else 'n/a'} GB vs {mems} GB ({where_mem})")
        floor = by.get("head_only")
        parts[-1] += (f"; control: frozen backbone + trained head {fmt_num(statistics.fmean(reported_scores(floor.runs, scale)[0]), 1)}"
                      if floor is not None and floor.scores else "; control: no head_only run (frozen backbone + head)")
        why_mem = _not_alone([c for c in (mread, *mothers) if c is not None])
        if why_mem:
            parts[-1] += f" [memory {why_mem}]"
        oks.append(DOES_NOT_HOLD if not mem_lower and not why_mem else UNDECIDABLE if why_mem else decision.verdict)
    if not parts:
        why = "n/a: READ and LoRA/adapter/BitFit ran only on random-init models (scores meaningless)" if skipped else \
            "n/a: no pretrained model × task with READ and at least one of LoRA, adapter, BitFit scored"
        return Claim(PAPER, claim, paper_value, why, NOT_MEASURABLE)
    return Claim(PAPER, claim, paper_value, "; ".join(parts), combine([_Verdict(v) for v in oks]))


# --- figures ------------------------------------------------------------------------------------


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


def _size_plot(cells: Sequence[Cell], path: Path) -> Path | None:
    from ..plots import _new_figure

    points = _size_points(cells)
    if not points:
        return None
    tasks = sorted(points)[:3]
    fig = _new_figure(5.6 * len(tasks), 4.0)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for method, pts in points[task].items():
            ax.plot([s / 1e6 for s, _, _ in pts], [p / GB for _, p, _ in pts], marker="o", color=_COLOURS[method], label=LABELS[method])
        ax.set_xscale("log")
        ax.set_xlabel("backbone parameters (M, log scale)")
        ax.set_ylabel("peak training memory (GB; CPU: above job start)")
        ax.set_title(f"T5 sizes × {task}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _scatter(cells: Sequence[Cell], xfn: Callable[[Cell], float | None], xlabel: str, scale: float, path: Path) -> Path | None:
    from matplotlib.colors import to_rgba

    from ..plots import _MARKERS, _clusters, _dodge, _new_figure, _shift, _wrap

    panels: dict[tuple, list] = {}
    for c in cells:
        x = xfn(c)
        if x is not None and c.score is not None and not c.random_init:  # random weights: no score to plot
            panels.setdefault((c.model, c.task), []).append((c.method, x, c.score * scale))
    if not panels:
        return None
    keys = sorted(panels)[:6]
    width = 4.6 * len(keys)
    fig = _new_figure(width, 4.2)
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    dodged = False
    for ax, key in zip(axes, keys):
        pts = panels[key]
        offsets = _dodge([(x, y) for _, x, y in pts], False)  # methods on top of one another: side by side
        ranks = _clusters([(x, y) for _, x, y in pts], False)
        dodged |= any(offsets)
        span = (max(x for _, x, _ in pts) - min(x for _, x, _ in pts)) or 1.0
        for (method, x, y), off, (rank, _) in zip(pts, offsets, ranks):
            x = _shift(x, off, False, span)
            colour = _COLOURS[method]  # a colour and a marker per method, the same in every READ figure
            ax.plot([x], [y], linestyle="none", marker=_MARKERS[METHODS.index(method) % len(_MARKERS)], markersize=7,
                    color=colour, markerfacecolor=to_rgba(colour, 0.35), markeredgewidth=1.2, label=LABELS[method], zorder=3)
            ax.annotate(LABELS[method], (x, y), textcoords="offset points", xytext=(4, 4 + 10 * rank), fontsize=8)  # stacked
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"score{' (×100)' if scale == 100 else ''}")
        ax.set_title(f"{key[0]} × {key[1]}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.15, y=0.12)  # room for the point labels inside the axes
    fig.suptitle(_wrap(f"READ and baselines: score vs {xlabel}" + (" (coinciding points spread sideways slightly)" if dodged else ""),
                       width))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None:
    runs = training_runs(runs)  # evaluate/compress runs re-score a source run: not results of their own
    cells = collect_cells(runs)
    if not any(c.method in PETL for c in cells):
        return None
    scale = _scale(cells)
    ratios_md, _ = ratio_table(cells)
    claims = [memory_claim(cells), energy_claim(cells), accuracy_claim(cells, scale)]
    files: list[Path] = []
    notes = []
    if plots:
        out_dir = Path(out_dir)
        energy_png = _scatter(cells, lambda c: c.energy()[0], "training energy (kWh)", scale, out_dir / FIGURE_ENERGY)
        if energy_png is not None:
            files.append(energy_png)
            notes.append(f"![Figure 1: energy vs score]({FIGURE_ENERGY})")
        else:
            notes.append(f"_Figure 1 (energy vs score) not drawn: no run has an energy figure ({_energy_missing(cells[0].runs[0])[5:]})._")
        mem_png = _scatter(cells, lambda c: c.peak / GB if c.peak is not None else None, "peak training memory (GB)", scale, out_dir / FIGURE_MEMORY)
        if mem_png is not None:
            files.append(mem_png)
            notes.append(f"![peak training memory vs score]({FIGURE_MEMORY})")
        size_png = _size_plot(cells, out_dir / FIGURE_SIZE)
        if size_png is not None:
            files.append(size_png)
            notes.append(f"![Figure 4 (right): peak training memory vs backbone size]({FIGURE_SIZE})")
    sizes_md = size_table(cells)
    if sizes_md is not None:
        notes.insert(0, "**Peak training memory vs backbone size** (Figure 4 right; T5 shapes, runs measured alone; on CPU the "
                     "peak RSS above the RSS at job start):\n\n" + sizes_md)
    multi = [c for c in cells if c.settings > 1]
    body = [
        "Table 1 / Table 3 columns, one row per model × task × method (the best setting on validation, mean ± std over its seeds). "
        "Peak memory on CPU is the process's peak resident set (Python, libraries, data and weights included), so ratios to dense "
        "are closer to 1 than the paper's GPU allocator peaks. Random-init rows have real-size shapes: their memory, time and "
        "energy count, their scores do not. A peak marked † comes from a run that did not have its own fresh process and the "
        "machine to itself (summary.json `measurement`): it is left out of the ratios and the verdict.",
        "",
        table_1(cells, scale),
        "",
        "**Peak training memory vs dense fine-tuning** (same model × task):",
        "",
        ratios_md,
        "",
        *[n + "\n" for n in notes],
    ]
    if multi:
        body.append("Rows picked among several settings: " + ", ".join(f"{LABELS[c.method]} on {c.model} × {c.task} ({c.settings})" for c in multi) + ".")
    return Section(title="READ: recurrent adaptation vs PETL baselines (energy, memory, score)",
                   markdown="\n".join(body).rstrip() + "\n", files=files, claims=claims)
