"""ERE (papers/ere.txt, METHODS.md §5): score vs storage of compressed full fine-tunes.

Reads the `job=compress` runs of ERE and its two baselines (BITQ, LRA). Each names its source
run (summary.json `source.path`, config.yaml `source`): the uncompressed fine-tune whose score
the compressed one is compared with (the source run's directory when it is among `runs` or still
on disk, otherwise the `source.main` the compress job copied). Storage is the artifact's bytes on
disk over the dense fp32 checkpoint's (`storage.artifacts`, `storage.dense_fp32_bytes`).

"Within 1 point" means the reconstruction's main score *and* (where the task reports one) its F1
are at most 1 point (of 100) below the source run's; an improvement counts as within. A claim on a
model/task whose source scores less than 10 points above the majority class is "undecidable on this
proxy" (report.verdicts). Beside the score: the reconstruction's fidelity to θ' (agreement of
predictions, mean KL of the output distributions; summary.json `fidelity`) and the rank-0 control
(`method.rank_prior=0`: no residual).

The points are read from the runs in `ere_points.py`; the analysis, claims, tables, figure and
the section are here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from ..collect import Run
from ..render import fmt_num, md_table
from ..verdicts import UNDECIDABLE, reference_gate, stats
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section
from .ere_points import METHODS, TOLERANCE, Point, collect_points, fmt_int, fmt_pct

log = logging.getLogger(__name__)

PAPER = "ERE"
LABELS = {"ere": "ERE", "bitq": "BITQ", "lra": "LRA"}
STORAGE_CAP = 10.0  # % of dense fp32: the storage the verdict allows (the paper: 6.0%)
PAPER_STORAGE, PAPER_R, PAPER_B = 6.0, 256, 4
PAPER_ERE, PAPER_DENSE = 89.2, 89.4
PLOT = "ere_score_vs_storage.png"
_COLOURS = {"ere": "tab:blue", "bitq": "tab:orange", "lra": "tab:green"}
_MARKERS = {"ere": "o", "bitq": "s", "lra": "^"}


# ----------------------------------------------------------------------------- analysis
def cheapest_within(points: Sequence[Point]) -> Point | None:
    """The point with the least storage whose drop is within TOLERANCE, or None."""
    ok = [p for p in points if p.within and p.storage_pct is not None]
    return min(ok, key=lambda p: p.storage_pct) if ok else None


def _by(points: Sequence[Point], *, method: str | None = None, group: tuple | None = None) -> list[Point]:
    return [p for p in points if (method is None or p.method == method) and (group is None or p.group == group)]


def _groups(points: Sequence[Point]) -> list[tuple]:
    return list(dict.fromkeys(p.group for p in points))


def _on(group: tuple, points: Sequence[Point]) -> str:
    """'minilm on mrpc (source seed 42)': what a figure was measured on."""
    seeds = sorted({str(p.source_seed) for p in points if p.group == group and p.source_seed is not None})
    seed = f", source seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" if seeds else ""
    return f"{group[0]} on {group[1]}{seed}"


def _drop_text(p: Point) -> str:
    out = f"drop {fmt_num(p.drop, 2)} pts main ({fmt_num(p.score, 2)} vs {fmt_num(p.source_score, 2)})"
    if p.f1_drop is not None:
        out += f", {fmt_num(p.f1_drop, 2)} pts F1 ({fmt_num(p.f1, 2)} vs {fmt_num(p.source_f1, 2)})"
    return out


def one_example(p: Point) -> float:
    """Points that one validation example is worth (100 / n); 0 when n is unknown."""
    return 100.0 / p.n_eval if p.n_eval else 0.0


def beats_at_equal_storage(points: Sequence[Point], baseline: str) -> tuple[int, int, list[str]]:
    """For each `baseline` point, is there an ERE point of the same source with no more storage
    and no lower score? A score lower by less than one validation example's worth (100/n points)
    is a tie, not a loss. (k such points, n comparable ones, the losses and ties as text)."""
    k = n = 0
    losses = []
    for b in _by(points, method=baseline):
        if b.storage_pct is None or b.score is None:
            continue
        ere = [p for p in points if p.method == "ere" and p.source == b.source and p.storage_pct is not None
               and p.score is not None and p.storage_pct <= b.storage_pct]
        if not ere:
            continue
        n += 1
        best = max(ere, key=lambda p: p.score)
        if best.score >= b.score - 1e-9:
            k += 1
        elif best.score > b.score - one_example(b) - 1e-9:
            k += 1
            losses.append(f"tie: {LABELS[baseline]} {b.setting} ({fmt_pct(b.storage_pct)}: {fmt_num(b.score, 2)}) vs ERE "
                          f"{best.setting} ({fmt_pct(best.storage_pct)}: {fmt_num(best.score, 2)}), less than one "
                          f"validation example ({fmt_num(one_example(b), 2)} pts) apart")
        else:
            losses.append(f"not: {LABELS[baseline]} {b.setting} ({fmt_pct(b.storage_pct)}: {fmt_num(b.score, 2)}) > best ERE at "
                          f"≤ that storage ({best.setting}, {fmt_pct(best.storage_pct)}: {fmt_num(best.score, 2)})")
    return k, n, losses


def _verdict(ok: Sequence[bool | None]) -> str:
    """False anywhere: does not hold; None (undecidable) anywhere else: undecidable; else holds."""
    return DOES_NOT_HOLD if False in ok else UNDECIDABLE if None in ok else HOLDS


def source_gate(points: Sequence[Point]) -> str | None:
    """report.verdicts' gate on a model/task: the uncompressed source must score ≥ 10 points above
    the majority class, or a drop "within 1 point" says nothing (None: the source clears it)."""
    sources = {p.source: p.source_score for p in points if p.source_score is not None}
    majority = next((p.majority for p in points if p.majority is not None), None)
    return reference_gate(stats(sources.values()), majority, "the uncompressed source")


def _gate(texts: list[str], ok: list, points: Sequence[Point], group: tuple) -> None:
    """The last verdict becomes undecidable, with the reason, where the group's source runs fail
    the reference gate (`source_gate`)."""
    why = source_gate(_by(points, group=group))
    if why:
        texts[-1] += f"; undecidable: {why}"
        ok[-1] = None


def rank0_control(points: Sequence[Point]) -> str:
    """The rank-0 control per model/task (ERE r=0: no residual, θ plus the tensors stored as they
    are): what a claim's drop must be told apart from."""
    out = []
    for g in _groups(points):
        zero = [p for p in _by(points, method="ere", group=g) if p.rank == 0]
        if zero:
            z = zero[0]
            out.append(f"{g[0]} / {g[1]}: rank 0 scores {fmt_num(z.score, 2)} (drop {fmt_num(z.drop, 2)} pts, "
                       f"{fmt_pct(z.storage_pct)} of dense, agreement with θ' "
                       f"{'n/a' if z.agreement is None else f'{100 * z.agreement:.1f}%'})")
        else:
            out.append(f"{g[0]} / {g[1]}: rank-0 control not run (`method=ere method.rank_prior=0`)")
    return "; ".join(out)


def claims(points: Sequence[Point]) -> list[Claim]:
    ere = _by(points, method="ere")
    groups = _groups(ere)
    out = []

    # 1. storage: the cheapest ERE setting within 1 point, per model/task
    texts, ok = [], []
    for g in groups:
        mine = _by(ere, group=g)
        best = cheapest_within(mine)
        paper_setting = [p for p in mine if p.rank == PAPER_R and p.bits == PAPER_B]
        at_paper = (f"; at the paper's r={PAPER_R}, b={PAPER_B}: {fmt_pct(paper_setting[0].storage_pct)}"
                    if paper_setting else "")
        if best is None:
            worst = min((p for p in mine if p.worst_drop is not None), key=lambda p: p.worst_drop, default=None)
            texts.append(f"no ERE setting within {TOLERANCE:g} point on {_on(g, points)} (smallest drop "
                         f"{fmt_num(worst.worst_drop if worst else None, 2)} pts"
                         + (f" at {worst.setting}, {fmt_pct(worst.storage_pct)}" if worst else "") + f"){at_paper}")
            ok.append(False)
        else:
            texts.append(f"{fmt_pct(best.storage_pct)} of dense fp32 bytes at {best.setting}, the least storage "
                         f"within {TOLERANCE:g} point ({_drop_text(best)}); {_on(g, points)}{at_paper}")
            ok.append(best.storage_pct <= STORAGE_CAP)
        _gate(texts, ok, points, g)
    out.append(Claim(
        PAPER, f"storage {PAPER_STORAGE}% of dense at r={PAPER_R}, b={PAPER_B} (RoBERTa-large GLUE) at nearly "
               f"the uncompressed score (ours holds at ≤ {TOLERANCE:g} point drop with ≤ {STORAGE_CAP:g}% storage)",
        f"{PAPER_STORAGE}% of dense", "; ".join(texts) if texts else "n/a: no ERE compress run",
        _verdict(ok) if texts else NOT_MEASURABLE))

    # 2. score: the drop at the ERE setting the verdict picks (cheapest within; else closest to 6%)
    texts, ok = [], []
    for g in groups:
        mine = [p for p in _by(ere, group=g) if p.drop is not None and p.storage_pct is not None]
        if not mine:
            continue
        best = cheapest_within(mine)
        pick = best if best is not None and best.storage_pct <= STORAGE_CAP else min(
            mine, key=lambda p: (abs(math.log(p.storage_pct / PAPER_STORAGE)) if p.storage_pct > 0 else math.inf))
        paper_setting = [p for p in mine if p.rank == PAPER_R and p.bits == PAPER_B and p is not pick]
        at_paper = (f"; at the paper's r={PAPER_R}, b={PAPER_B} ({fmt_pct(paper_setting[0].storage_pct)}): "
                    f"{_drop_text(paper_setting[0])}" if paper_setting else "")
        texts.append(f"{_drop_text(pick)} at {pick.setting} ({fmt_pct(pick.storage_pct)} of dense){at_paper}; "
                     f"{_on(g, points)}" + ("" if str(g[1]).lower() == "glue" else " (one task, not a GLUE average)"))
        ok.append(pick.within and pick.storage_pct <= STORAGE_CAP)
        _gate(texts, ok, points, g)
    out.append(Claim(
        PAPER, f"GLUE avg {PAPER_ERE} with ERE vs {PAPER_DENSE} uncompressed (r={PAPER_R}, b={PAPER_B}, "
               f"RoBERTa-large; ours holds at ≤ {TOLERANCE:g} point drop with ≤ {STORAGE_CAP:g}% storage)",
        f"{PAPER_ERE} vs {PAPER_DENSE} (−{PAPER_DENSE - PAPER_ERE:.1f})",
        "; ".join(texts) if texts else "n/a: no ERE run with both its own and its source's score",
        _verdict(ok) if texts else NOT_MEASURABLE))

    # 3. ERE vs the baselines at equal storage
    parts, verdicts = [], []
    for base in ("bitq", "lra"):
        k, n, losses = beats_at_equal_storage(points, base)
        if n:
            parts.append(f"vs {LABELS[base]}: ERE at ≤ the storage scores ≥ it (or within one validation example) for {k} of {n} {LABELS[base]} settings"
                         + (f" ({'; '.join(losses[:3])}{' …' if len(losses) > 3 else ''})" if losses else ""))
            verdicts.append(k == n)
    where = ", ".join(_on(g, points) for g in groups)
    gates = [f"{g[0]} / {g[1]}: {why}" for g in groups for why in [source_gate(_by(points, group=g))] if why]
    if parts and gates:
        where += "; undecidable: " + "; ".join(gates)
        verdicts.append(None)
    out.append(Claim(
        PAPER, "BITQ and LRA alone need more storage than ERE for the same score (ERE beats them at equal storage)",
        "Table 1: BITQ, LRA larger than ERE",
        ("; ".join(parts) + f"; {where}") if parts else
        "n/a: no BITQ/LRA compress run with an ERE run of the same source at no more storage",
        _verdict(verdicts) if parts else NOT_MEASURABLE))
    return out


# ----------------------------------------------------------------------------- tables
def settings_table(points: Sequence[Point], multi_group: bool) -> str:
    has_f1 = any(p.f1 is not None for p in points)
    header = (["model / task"] if multi_group else []) + [
        "method", "rank prior r", "bits b", "storage (% of dense fp32)", "artifact (MiB)", "score (main, pts)",
        "source (pts)", "drop (pts)"]
    if has_f1:
        header += ["F1 (pts)", "F1 drop (pts)"]
    has_fid = any(p.agreement is not None for p in points)
    if has_fid:
        header += ["agreement with θ' (%)", "KL(θ' ‖ rec.) (nats)"]
    header += ["compress (s)"]
    rows = []
    for p in points:
        bits = ("fp32" if p.bits == 32 else "fp16") if p.method == "lra" else fmt_int(p.bits)
        rank = fmt_int(p.rank) if p.method != "ere" or p.rank is not None else f"budget {fmt_num(p.budget_fraction)}"
        row = ([f"{p.model} / {p.task}"] if multi_group else []) + [
            LABELS[p.method] + (f" ({p.extra})" if p.extra else ""), rank, bits, fmt_pct(p.storage_pct),
            fmt_num(None if p.artifact_bytes is None else p.artifact_bytes / (1 << 20), 3),
            fmt_num(p.score, 2), fmt_num(p.source_score, 2), fmt_num(p.drop, 2)]
        if has_f1:
            row += [fmt_num(p.f1, 2), fmt_num(p.f1_drop, 2)]
        if has_fid:
            row += [fmt_num(None if p.agreement is None else 100 * p.agreement, 2), "—" if p.kl is None else f"{p.kl:.3g}"]
        row += [fmt_num(p.seconds, 1)]
        rows.append(row)
    return md_table(header, rows, ("l" if multi_group else "") + "lrrrrrrr" + ("rr" if has_f1 else "") + ("rr" if has_fid else "") + "r")


def budget_table(points: Sequence[Point]) -> str:
    rows = []
    for g in _groups(points):
        for method in METHODS:
            mine = _by(points, method=method, group=g)
            if not mine:
                continue
            best = cheapest_within(mine)
            if best is None:
                scored = [p for p in mine if p.worst_drop is not None]
                least = min(scored, key=lambda p: p.worst_drop) if scored else None
                rows.append([f"{g[0]} / {g[1]}", LABELS[method], f"none of {len(mine)}", "—",
                             f"least: {fmt_num(least.worst_drop, 2)} at {least.setting} ({fmt_pct(least.storage_pct)})"
                             if least else "—"])
            else:
                rows.append([f"{g[0]} / {g[1]}", LABELS[method], best.setting, fmt_pct(best.storage_pct),
                             fmt_num(best.worst_drop, 2)])
    return md_table(["model / task", "method", f"least storage within {TOLERANCE:g} point", "storage (% of dense fp32)",
                     "drop (pts, worse of main and F1)"], rows, "llllr")


def floor_note(points: Sequence[Point]) -> str:
    """How far the least-storage run of each model/task falls: a 1-point rule says little where even
    a near-empty residual stays within a point or two (a weak source near its trivial classifier)."""
    out = []
    for g in _groups(points):
        mine = [p for p in _by(points, group=g) if p.storage_pct is not None and p.worst_drop is not None]
        if not mine:
            continue
        low = min(mine, key=lambda p: p.storage_pct)
        out.append(f"On {g[0]} / {g[1]} the least storage measured ({LABELS[low.method]} {low.setting}, "
                   f"{fmt_pct(low.storage_pct)}) loses {fmt_num(low.drop, 2)} pts main"
                   + (f", {fmt_num(low.f1_drop, 2)} pts F1" if low.f1_drop is not None else "")
                   + "; a drop within 1 point means little where this is not well above 1.")
    return " ".join(out)


# ----------------------------------------------------------------------------- plot
def score_vs_storage_figure(points: Sequence[Point]):
    """One panel per model/task: main score (pts) vs storage (% of dense fp32, log); one series per
    method, the uncompressed source as a star at 100%, a dashed line 1 point below it."""
    from ..plots import _log_limits, _new_figure, _wrap

    groups = [g for g in _groups(points)
              if any(p.storage_pct and p.score is not None for p in _by(points, group=g))]
    if not groups:
        return None
    ncols = min(2, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    width = 5.2 * ncols + 1.4
    fig = _new_figure(width, 4.2 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for ax, g in zip(axes, groups):
        mine = [p for p in _by(points, group=g) if p.storage_pct and p.storage_pct > 0 and p.score is not None]
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
        dense = sorted({p.source_score for p in _by(points, group=g) if p.source_score is not None})
        if dense:
            d = sum(dense) / len(dense)
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


# ----------------------------------------------------------------------------- section
def section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None:
    points = collect_points(runs)
    if not points:
        return None
    out_dir = Path(out_dir)
    files: list[Path] = []
    plot_note = ""
    if plots:
        try:
            fig = score_vs_storage_figure(points)
            if fig is None:
                plot_note = "No plot: no compress run has both a storage figure and a score."
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                fig.savefig(out_dir / PLOT, dpi=110)
                files.append(out_dir / PLOT)
        except Exception as exc:  # a plot must never cost the tables
            log.exception("plot %s failed", PLOT)
            plot_note = f"No plot: plotting failed ({exc})."
    multi = len(_groups(points)) > 1
    cl = claims(points)
    n_sources = len({p.source for p in points})
    lines = [
        f"Compressed full fine-tunes (`job=compress`): {len(points)} runs of "
        + ", ".join(f"{LABELS[m]} ({len(_by(points, method=m))})" for m in METHODS if _by(points, method=m))
        + f" over {n_sources} source run{'s' if n_sources != 1 else ''} ("
        + "; ".join(_on(g, points) for g in _groups(points)) + "). "
        "Storage is the compressed artifact's bytes on disk (codes, scales, D, the tensors stored as they are and "
        "the header) over the dense fp32 checkpoint's; the score is the reconstructed model's main validation metric, "
        "the drop is the source run's score minus it (points; negative = better than uncompressed).",
        "",
    ]
    if files:
        lines += [f"![score vs storage]({PLOT})", ""]
    elif plot_note:
        lines += [plot_note, ""]
    lines += ["### Every setting", "", settings_table(points, multi), "",
              f"### The least storage within {TOLERANCE:g} point of the uncompressed score", "",
              budget_table(points), "",
              f"Within {TOLERANCE:g} point: the drop of the main score and, where the task reports F1, of F1 are both "
              f"≤ {TOLERANCE:g}. " + floor_note(points), "",
              "Controls: " + rank0_control(points) + "; majority class of the validation split: " + "; ".join(
                  f"{g[0]} / {g[1]} {fmt_num(next((p.majority for p in _by(points, group=g) if p.majority is not None), None), 2)}"
                  for g in _groups(points)) + ". Fidelity (agreement of the reconstruction's predictions with θ''s, and "
              "the mean KL divergence of their output distributions, from `fidelity` in the compress run's summary.json) "
              "shows how much of θ' a setting keeps where the score cannot tell.", "",
              "### Paper vs ours", "",
              md_table(["claim", "paper", "ours", "verdict"], [[c.claim, c.paper_value, c.ours, c.verdict] for c in cl]),
              ""]
    return Section(title="ERE — efficient residual encoding", markdown="\n".join(lines), files=files, claims=cl)
