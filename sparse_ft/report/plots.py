"""The report's PNG plots. Each builder returns a matplotlib Figure, or the reason it has none;
write_plots saves them. matplotlib is imported lazily so the package imports without it."""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from .aggregate import Analysis, mean_std, method_sort, task_sort
from .collect import ENERGY_SOURCES, Run

log = logging.getLogger(__name__)

PLOTS = ("score_vs_updated.png", "score_vs_energy.png", "score_vs_sparsity.png",
         "memory_per_method.png")

MiB = float(1 << 20)
_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
_PANEL_W, _PANEL_H = 4.6, 3.8
_DPI = 110


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas: drawable and measurable without pyplot
    return fig


def _wrap(text: str, width_in: float, fontsize: float = 12.0) -> str:
    """Wrap a title to the figure's width (a character is ~0.55 em wide)."""
    chars = max(12, int(width_in * 72 / (fontsize * 0.55)))
    return "\n".join(textwrap.wrap(text, chars))


def _log_limits(ax, values: Sequence[float]) -> None:
    """Whole decades around the data, a few labelled major ticks and no minor labels: a
    narrow log range otherwise gets crowded, overlapping minor-tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo = 10 ** math.floor(math.log10(min(values) / 1.5))
    hi = 10 ** math.ceil(math.log10(max(values) * 1.5))
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _points(an: Analysis, xfn: Callable[[Run], float | None], logx: bool) -> dict[Any, list]:
    """task → [(method, x mean, x std, y mean, y std)], one point per method × setting."""
    panels: dict[Any, list] = {}
    for g in an.groups:
        pairs = [(xfn(r), r.main) for r in g.runs]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None and (not logx or x > 0)]
        if not pairs:
            continue
        xm, xsd, _ = mean_std(p[0] for p in pairs)
        ym, ysd, _ = mean_std(p[1] * an.score_scale for p in pairs)
        panels.setdefault(g.task, []).append((g.method, xm, xsd or 0.0, ym, ysd or 0.0))
    return panels


def scatter_figure(an: Analysis, xfn: Callable[[Run], float | None], xlabel: str, logx: bool, title: str):
    """One panel per task; a point per method × setting with error bars over seeds; one legend
    for the figure, outside the panels, so it never hides points or spills off a panel."""
    panels = _points(an, xfn, logx)
    if not panels:
        return "no completed run has both a main score and this x figure"
    methods = sorted({p[0] for pts in panels.values() for p in pts}, key=method_sort)
    styles = {m: (_COLOURS[i % len(_COLOURS)], _MARKERS[i % len(_MARKERS)]) for i, m in enumerate(methods)}
    tasks = sorted(panels, key=task_sort)
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    width = _PANEL_W * ncols + 1.6  # room for the legend on the right
    fig = _new_figure(width, _PANEL_H * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    handles = {}
    for ax, task in zip(axes.flat, tasks):
        for method, xm, xsd, ym, ysd in panels[task]:
            colour, marker = styles[method]
            handles[method] = ax.errorbar(xm, ym, xerr=xsd or None, yerr=ysd or None, fmt=marker, color=colour,
                                          capsize=3, markersize=6)
        if logx:
            _log_limits(ax, [p[1] for p in panels[task]])
        else:
            ax.margins(x=0.1)  # keep edge points (and their error bars) off the frame
        ax.set_title(str(task))
        ax.set_xlabel(_wrap(xlabel, _PANEL_W, 10))
        ax.set_ylabel("main score" + (" (×100)" if an.score_scale != 1 else ""))
        ax.grid(True, alpha=0.3, which="major")
        ax.grid(True, alpha=0.1, which="minor")
    fig.legend([handles[m] for m in methods], [str(m) for m in methods], loc="outside right upper",
               fontsize="small", title="method")
    fig.suptitle(_wrap(title, width))
    return fig


def memory_figure(an: Analysis):
    """Horizontal bars, one row per method × setting: the labels sit on the y axis, so many
    methods or long setting names make the figure taller instead of crowding the labels."""
    bars = []  # (label, task, mean MiB, std)
    for g in an.groups:
        m, s, n = mean_std(r.peak_train_bytes / MiB for r in g.runs if r.peak_train_bytes is not None)
        if n:
            lab = an.label(g.method, g.setting)
            bars.append((str(g.method) + ("" if lab == "—" else "\n" + lab.replace(", ", "\n")), g.task, m, s or 0.0))
    if not bars:
        return "no completed run reported `memory.peak_bytes.train`"
    labels = list(dict.fromkeys(b[0] for b in bars))
    tasks = sorted({b[1] for b in bars}, key=task_sort)
    lines = max(lab.count("\n") + 1 for lab in labels)
    row_h = max(0.45, 0.2 * lines, 0.16 * len(tasks))
    width = 7.5 + (1.4 if len(tasks) > 1 else 0.0)
    fig = _new_figure(width, len(labels) * row_h + 1.6)
    ax = fig.subplots()
    bar_h = 0.8 / len(tasks)
    for j, task in enumerate(tasks):
        mine = [(labels.index(b[0]), b[2], b[3]) for b in bars if b[1] == task]
        ax.barh([i - 0.4 + bar_h * (j + 0.5) for i, _, _ in mine], [w for _, w, _ in mine], height=bar_h,
                xerr=[e for _, _, e in mine], capsize=3, label=str(task))
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first method on top, as in the tables
    ax.set_xlabel("peak train memory (MiB)")
    ax.grid(True, axis="x", alpha=0.3)
    if len(tasks) > 1:
        fig.legend(loc="outside right upper", fontsize="small", title="task")
    fig.suptitle(_wrap("Peak training memory per method (mean ± std over seeds)", width))
    return fig


def _x_updated(r: Run) -> float | None:
    return None if r.updated_fraction is None else 100.0 * r.updated_fraction


def _x_sparsity(r: Run) -> float | None:
    return None if r.sparsity is None else 100.0 * r.sparsity


def _x_energy(r: Run) -> float | None:
    return r.energy[0]


def build_figures(an: Analysis) -> dict[str, Any]:
    """name → Figure, or the reason the plot is skipped."""
    if not an.groups:
        return {name: "no completed training runs" for name in PLOTS}
    out: dict[str, Any] = {}
    specs = {
        "score_vs_updated.png": (_x_updated, "updated parameters, % of entries that differ from the "
                                 "pretrained weights (log)", True, "Score vs updated-parameter %"),
        "score_vs_energy.png": (_x_energy, "energy (kWh, log)", True, "Score vs energy"),
        "score_vs_sparsity.png": (_x_sparsity, "sparsity, % of weights that are zero (measured)", False,
                                  "Score vs measured sparsity"),
    }
    for name, (xfn, xlabel, logx, title) in specs.items():
        out[name] = _guarded(name, lambda: scatter_figure(an, xfn, xlabel, logx, title))
    if isinstance(out["score_vs_energy.png"], str) and not an.energy_sources:
        out["score_vs_energy.png"] = ("no completed run reported an energy figure ("
                                      + ", ".join(ENERGY_SOURCES) + ")")
    if isinstance(out["score_vs_sparsity.png"], str) and not any(r.sparsity is not None for r in an.completed):
        out["score_vs_sparsity.png"] = ("no completed run measured `sparsity.overall` (the fraction of zero "
                                        "weights that pruning methods write); updated % and trainable % "
                                        "are not sparsity")
    out["memory_per_method.png"] = _guarded("memory_per_method.png", lambda: memory_figure(an))
    return out


def _guarded(name: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except Exception as exc:  # a plot must never cost the tables
        log.exception("plot %s failed", name)
        return f"plotting failed: {exc}"


def write_plots(an: Analysis, out: Path) -> dict[str, str | None]:
    """name → None (written) or the reason it was skipped."""
    results: dict[str, str | None] = {}
    for name, fig in build_figures(an).items():
        if not isinstance(fig, str):
            fig = _guarded(name, lambda: fig.savefig(out / name, dpi=_DPI))
        results[name] = fig if isinstance(fig, str) else None
        if results[name]:
            log.info("skipped %s: %s", name, results[name])
            stale = out / name
            if stale.is_file():  # don't leave an old plot that no longer matches the tables
                stale.unlink()
    return results
