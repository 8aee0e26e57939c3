"""The report's PNG plots. Each builder returns a matplotlib Figure, or the reason it has none;
write_plots saves them. matplotlib is imported lazily so the package imports without it.

Series are told apart by a (colour, marker) pair that no other series of the figure has
(`series_styles`: 10 colours × 10 markers, distinct for up to 100 series); points of different
methods that would land on one another are spread sideways a little (`_dodge`, said in the
figure), and markers are half transparent, so no method hides another. Bars of runs that shared
one multirun process carry a caveat (`Run.shared_process`)."""

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
_LEGEND_ROW_IN = 0.24  # height of one legend entry at fontsize "small", inches
_DODGE_NEAR = 0.025    # points closer than this (fraction of the axes, both ways) are spread apart
_DODGE_STEP = 0.04     # ... by this much of the axes' width per point


def series_styles(names: Sequence[Any]) -> dict[Any, tuple[str, str]]:
    """name → (colour, marker), every pair distinct for up to 100 names: series i takes colour
    i mod 10 and marker (i + i div 10) mod 10, so neighbours differ in both and the 11th series
    does not repeat the 1st's marker."""
    n = len(_COLOURS)
    return {name: (_COLOURS[i % n], _MARKERS[(i + i // n) % len(_MARKERS)]) for i, name in enumerate(names)}


def _legend_layout(n: int, height: float) -> tuple[int, float]:
    """(columns, figure height) so that a legend of `n` entries fits beside the panels."""
    ncol = 1 if n * _LEGEND_ROW_IN + 1.0 <= max(height, 6.0) else 2
    rows = math.ceil(n / ncol)
    return ncol, max(height, rows * _LEGEND_ROW_IN + 1.2)


def _clusters(points: Sequence[tuple[float, float]], logx: bool) -> list[tuple[int, int]]:
    """Per point (its rank in its cluster, the cluster's size): points closer than _DODGE_NEAR of
    the data's extent in both directions (x in decades on a log axis) form one cluster."""
    if not points:
        return []
    xs = [math.log10(x) if logx else x for x, _ in points]
    ys = [y for _, y in points]
    xspan = (max(xs) - min(xs)) or 1.0
    yspan = (max(ys) - min(ys)) or 1.0
    clusters: list[list[int]] = []
    for i in range(len(points)):
        for c in clusters:
            j = c[0]
            if abs(xs[i] - xs[j]) / xspan < _DODGE_NEAR and abs(ys[i] - ys[j]) / yspan < _DODGE_NEAR:
                c.append(i)
                break
        else:
            clusters.append([i])
    out = [(0, 1)] * len(points)
    for c in clusters:
        for k, i in enumerate(c):
            out[i] = (k, len(c))
    return out


def _dodge(points: Sequence[tuple[float, float]], logx: bool) -> list[float]:
    """Per point an x offset (in fractions of the data's x extent) that spreads points lying on
    top of one another side by side: a cluster's points get offsets _DODGE_STEP apart, centred
    on the true x. Points alone keep offset 0."""
    return [(k - (n - 1) / 2) * _DODGE_STEP for k, n in _clusters(points, logx)]


def _shift(x: float, offset: float, logx: bool, span: float) -> float:
    """x moved by `offset` axes fractions of an axis spanning `span` (decades on a log axis)."""
    return x * 10 ** (offset * span) if logx else x + offset * span


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


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    """The whole decades around the data (with a 1.5× margin) that a log x axis shows."""
    return 10 ** math.floor(math.log10(min(values) / 1.5)), 10 ** math.ceil(math.log10(max(values) * 1.5))


def _log_limits(ax, values: Sequence[float]) -> None:
    """Whole decades around the data, a few labelled major ticks and no minor labels: a
    narrow log range otherwise gets crowded, overlapping minor-tick labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = _log_range(values)
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
    from matplotlib.colors import to_rgba

    methods = sorted({p[0] for pts in panels.values() for p in pts}, key=method_sort)
    styles = series_styles(methods)
    tasks = sorted(panels, key=task_sort)
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    legend_cols, height = _legend_layout(len(methods), _PANEL_H * nrows + 0.9)
    width = _PANEL_W * ncols + 1.6 * legend_cols  # room for the legend on the right
    fig = _new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    handles = {}
    dodged = False
    for ax, task in zip(axes.flat, tasks):
        pts = panels[task]
        offsets = _dodge([(p[1], p[3]) for p in pts], logx)
        dodged |= any(offsets)
        xs = [p[1] for p in pts]
        if logx:  # offsets are fractions of the axis: decades shown on a log axis, the data's range (+20%) on a linear one
            lo, hi = _log_range(xs)
            span = math.log10(hi / lo)
        else:
            span = 1.2 * (max(xs) - min(xs)) or 1.0
        for (method, xm, xsd, ym, ysd), off in zip(pts, offsets):
            colour, marker = styles[method]
            handles[method] = ax.errorbar(_shift(xm, off, logx, span), ym, xerr=xsd or None, yerr=ysd or None, fmt=marker,
                                          color=colour, markerfacecolor=to_rgba(colour, 0.35), markeredgecolor=colour,
                                          markeredgewidth=1.2, capsize=3, markersize=7, alpha=0.9, label=str(method))
        if logx:
            _log_limits(ax, [_shift(x, off, logx, span) for x, off in zip(xs, offsets)])
        else:
            ax.margins(x=0.1)  # keep edge points (and their error bars) off the frame
        ax.set_title(str(task))
        ax.set_xlabel(_wrap(xlabel, _PANEL_W, 10))
        ax.set_ylabel("main score" + (" (×100)" if an.score_scale != 1 else ""))
        ax.grid(True, alpha=0.3, which="major")
        ax.grid(True, alpha=0.1, which="minor")
    fig.legend([handles[m] for m in methods], [str(m) for m in methods], loc="outside right upper",
               fontsize="small", title="method", ncols=legend_cols)
    if dodged:
        title += " (coinciding points spread sideways slightly; exact x in the tables)"
    fig.suptitle(_wrap(title, width - 1.6 * legend_cols))  # not under the legend
    return fig


def memory_figure(an: Analysis):
    """Horizontal bars, one row per method × setting: the labels sit on the y axis, so many
    methods or long setting names make the figure taller instead of crowding the labels."""
    bars = []  # (label, task, mean MiB, std or None when n = 1, n, any run shared a process)
    for g in an.groups:
        measured = [r for r in g.runs if r.peak_train_bytes is not None]
        m, s, n = mean_std(r.peak_train_bytes / MiB for r in measured)
        if n:
            lab = an.label(g.method, g.setting)
            bars.append((str(g.method) + ("" if lab == "—" else "\n" + lab.replace(", ", "\n")), g.task, m,
                         s if n > 1 else None, n, any(r.shared_process for r in measured)))
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
    colours = series_styles(tasks)
    for j, task in enumerate(tasks):
        mine = [(labels.index(b[0]) - 0.4 + bar_h * (j + 0.5), b) for b in bars if b[1] == task]
        colour = colours[task][0]
        ax.barh([y for y, _ in mine], [b[2] for _, b in mine], height=bar_h, color=colour, label=str(task),
                hatch=None, edgecolor="white")
        for y, b in mine:
            if b[5]:  # shared a multirun process: hatched, see the caveat
                ax.barh([y], [b[2]], height=bar_h, color="none", edgecolor="black", hatch="///", linewidth=0)
        spread = [(y, b) for y, b in mine if b[3] is not None]  # ± std only where there is more than one run
        if spread:
            ax.errorbar([b[2] for _, b in spread], [y for y, _ in spread], xerr=[b[3] for _, b in spread],
                        fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first method on top, as in the tables
    ax.set_xlabel("peak train memory (MiB)")
    ax.grid(True, axis="x", alpha=0.3)
    if len(tasks) > 1:
        fig.legend(loc="outside right upper", fontsize="small", title="task")
    title = "Peak training memory per method (mean over seeds; ± std where n > 1)"
    shared = sum(1 for b in bars if b[5])
    if shared:
        title += (f". Caveat: hatched bars ({shared} of {len(bars)}) are jobs that shared one multirun process with "
                  "other jobs, so their peak includes memory earlier jobs left behind; compare them only with runs "
                  "that had a process of their own.")
    fig.suptitle(_wrap(title, width - (1.4 if len(tasks) > 1 else 0.0)))  # not under the legend
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
