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

The cells and tables are built from the runs in `read_cells.py`; the claims, figures and the
section are here.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..collect import Run, training_runs
from ..render import fmt_num
from ..verdicts import UNDECIDABLE, combine, decide_difference, majority_score, measured_alone, reported_scores
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section
from .read_cells import (ESTIMATORS, GB, LABELS, METHODS, PETL, Cell, _energy_missing, _job_ratio, _pairs, _scale, _size_points, _where,
                         collect_cells, ratio_table, size_table, table_1)

log = logging.getLogger(__name__)

PAPER = "READ"
BASELINES = ("lora", "adapter", "bitfit")  # the accuracy claim's comparison
RATIO_TARGET = 0.5    # READ / dense at most this: memory (paper 0.44) and energy (paper 0.16)
COMPARABLE = 1.0      # score points (×100 scale) READ may trail the best baseline and still be "comparable"
FIGURE_ENERGY = "read_energy_vs_score.png"
FIGURE_MEMORY = "read_memory_vs_score.png"
FIGURE_SIZE = "read_memory_vs_size.png"  # Figure 4 (right): peak training memory vs backbone size
_COLOURS = {"dense": "tab:gray", "head_only": "tab:brown", "bitfit": "tab:olive", "prompt_tuning": "tab:pink", "ia3": "tab:cyan", "adapter": "tab:green",
            "lora": "tab:orange", "lst": "tab:purple", "read": "tab:blue", "read_large": "tab:red"}


# --- claims -------------------------------------------------------------------------------------


@dataclass
class _Verdict:
    verdict: str


def _not_alone(cells: Sequence[Cell]) -> str | None:
    """Why these cells' memory figures are not comparable (report.verdicts.measured_alone; unlike
    `Cell.not_alone`, a run that did not record its conditions counts as not comparable), or None."""
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
        "Table 1 / Table 3 columns, one row per model × task × method (the best setting on validation, mean ± std over its seeds; "
        "two scores: the validation split the setting is selected on, carved from train under `task.split_scheme=read`, and "
        "the held-out official dev set the claims read). "
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
