"""ERE's figure: score of the reconstructed model vs storage, one panel per model/task (the
section is in `ere.py`)."""

from __future__ import annotations

import math
from typing import Sequence

from ..verdicts import stats
from .ere_points import LABELS, METHODS, TOLERANCE, Point, Setting, by, collect_settings, groups_of

_COLOURS = {"ere": "tab:blue", "bitq": "tab:orange", "lra": "tab:green"}
_MARKERS = {"ere": "o", "bitq": "s", "lra": "^"}


def score_vs_storage_figure(points: Sequence[Point | Setting]):
    """One panel per model/task: main score (pts, mean over the sources) vs storage (% of dense
    fp32, log); one series per method, the uncompressed source as a star at 100%, a dashed line
    1 point below it."""
    from ..plots import _log_limits, _new_figure, _wrap

    if points and isinstance(points[0], Point):
        points = collect_settings(points)
    groups = [g for g in groups_of(points)
              if any(p.storage_pct and p.score is not None for p in by(points, group=g))]
    if not groups:
        return None
    ncols = min(2, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    width = 5.2 * ncols + 1.4
    fig = _new_figure(width, 4.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for ax, g in zip(axes, groups):
        mine = [p for p in by(points, group=g) if p.storage_pct and p.storage_pct > 0 and p.score is not None]
        for method in METHODS:
            pts = sorted((p for p in mine if p.method == method), key=lambda p: p.storage_pct)
            if not pts:
                continue
            (h,) = ax.plot([p.storage_pct for p in pts], [p.score for p in pts], marker=_MARKERS[method],
                           color=_COLOURS[method], linestyle="none", label=LABELS[method])
            handles[LABELS[method]] = h
            for bits in sorted({p.bits for p in pts if p.bits is not None}):  # a thin line per bit width
                same = [p for p in pts if p.bits == bits]
                if len(same) > 1:
                    ax.plot([p.storage_pct for p in same], [p.score for p in same], color=_COLOURS[method],
                            linewidth=0.8, alpha=0.4)
            for i, p in enumerate(pts):  # labels alternate above and below: neighbours often share a score
                ax.annotate(p.setting, (p.storage_pct, p.score), textcoords="offset points",
                            xytext=(4, 3) if i % 2 == 0 else (4, -9), fontsize=6, color=_COLOURS[method])
        dense = stats(p.source_score for p in by(points, group=g))
        if dense is not None:
            d = dense.mean
            (h,) = ax.plot([100.0], [d], marker="*", markersize=12, color="black", linestyle="none",
                           label="uncompressed (fp32)")
            handles["uncompressed (fp32, 100%)"] = h
            line = ax.axhline(d - TOLERANCE, color="grey", linestyle="--", linewidth=0.8)
            handles[f"uncompressed − {TOLERANCE:g} point"] = line
        _log_limits(ax, [p.storage_pct for p in mine] + [100.0])
        ax.set_xlabel("artifact bytes, % of the dense fp32 checkpoint (log)")
        ax.set_ylabel("score (main metric, points)")
        ax.set_title(f"{g[0]} / {g[1]}", fontsize="medium")
        ax.grid(True, alpha=0.3, which="major")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize="small",
               ncols=min(3, len(handles)))
    fig.suptitle(_wrap("ERE vs BITQ and LRA: score of the reconstructed model vs storage", width))
    return fig
