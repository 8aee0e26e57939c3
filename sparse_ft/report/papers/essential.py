"""Essential Sparsity (papers/essential_sparsity.txt, METHODS.md §3): the score-drop curve of
one-shot magnitude pruning (OMP) and the essential sparsity read off it.

Curves. Per model × task × pruning criterion (`method.score`: magnitude | fisher; an N:M pattern
or a `scope=layer` run is a series of its own), one point per **measured** sparsity (summary.json
`sparsity.overall`, the exact zeros of the final weights; never the configured value), the score
the mean over seeds. Dense runs (`method=dense`) of the same model × task, and OMP runs that
measured sparsity 0, are the point s = 0 of every series; the dense score is their mean.
drop(s) = dense score − score(s), in points (×100 where the metric is a fraction 0–1).

* **essential sparsity** (ES): the largest measured s with drop(s) ≤ ε = 1 point such that every
  smaller measured s is within ε too (the paper's definition on a grid: "the largest sparsity
  whose score is ≥ dense − ε while pruning a little more falls below");
* **knee**: the first measured s whose drop exceeds ε, i.e. the next grid point after ES (so the
  true essential sparsity lies in [ES, knee)). When no point exceeds ε the knee is "not reached"
  and ES is only a lower bound (the grid stops there).

The ESS claim's verdict uses the magnitude-criterion unstructured curves: it holds when every such
curve's ES is ≥ 30% (the paper's lower end), does not hold when one is below 30% with its knee
measured, and is not measurable when there is no curve with at least one pruned point, or when a
curve ends below 30% still within ε (a lower bound only). A decided verdict passes report.verdicts'
rules or becomes "undecidable on this proxy": dense ≥ 10 points above the majority class, ≥ 3 seeds
at the deciding points, and those points outside the seed noise (holds: every point up to ES has
the 95% interval of OMP − dense above −ε; does not hold: the knee's interval lies below −ε). Runs of a random-init model
(`model.random_init=true`, e.g. tiny_bert) are tabled, marked "random init", but neither drawn nor
judged: a model that never learnt anything scores at chance, so its "drop" says nothing about
pretrained weights (both claims are "not measurable" when only such runs exist).

Mask similarity (the paper's Figure 10): IMP runs keep, per round, the cosine similarity of the
round's mask to the OMP mask of the pretrained weights at the same sparsity (`masks/rounds.json`,
also `method_report.rounds` in summary.json); the figure draws it against the round's sparsity.
Beside it, the floor: the cosine of a uniformly random mask of the same sparsity to the OMP mask
(`random_mask_cosine` in rounds.json, else its expectation 1 − s), which any claim of similarity
must clear. The claim ("> 96–98% inside the essential range") takes the lowest cosine over the
rounds at or below the essential sparsity of the same model × task (every round when none is),
leaving out the rounds that equal the OMP mask by construction: a dense round (sparsity 0) and
round 0 of a run with `dense_first=false`.

The curves and the mask cosines are read from the runs in `essential_curves.py`; the figures,
claims and the section are here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from ..collect import Run, training_runs
from ..render import fmt_cell, fmt_num, md_table
from ..verdicts import MIN_SEEDS, UNDECIDABLE, controls_line, decide_difference, for_claims, majority_score, reference_gate, stats
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section
from .essential_curves import (EPSILON, SPARSITY_BIN, CosinePoint, Curve, _cosine_rows, _is_omp, build_curves, essential_and_knee,
                               imp_cosines)

log = logging.getLogger(__name__)

PAPER = "ESS"
PAPER_ES_LOW = 30.0    # % — the paper: 30–50% of the weights removable for free
COSINE_PAPER = 0.96    # the paper: > 96–98% inside the essential range
CURVE_PLOT = "essential_drop_vs_sparsity.png"
COSINE_PLOT = "essential_imp_omp_mask_cosine.png"


# ----------------------------------------------------------------------------- figures
def _curve_figure(curves: Sequence[Curve]):
    from ..plots import _new_figure, _wrap, series_styles

    panels = sorted({(str(c.model), str(c.task)) for c in curves if c.judged})
    criteria = sorted({c.criterion for c in curves if c.judged}, key=lambda x: (x != "magnitude", x))
    if not panels:
        return None
    styles = series_styles(sorted({c.series for c in curves if c.judged}, key=lambda x: (x.split(",")[0] != "magnitude", x)))
    ncols, nrows = len(criteria), len(panels)
    width = 4.6 * ncols + 0.4
    fig = _new_figure(width, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (model, task) in enumerate(panels):
        for j, crit in enumerate(criteria):
            ax = axes[i][j]
            mine = [c for c in curves if c.judged and (str(c.model), str(c.task)) == (model, task) and c.criterion == crit]
            if not mine:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no {crit} runs", ha="center", va="center", transform=ax.transAxes)
                continue
            for c in mine:
                colour, marker = styles[c.series]
                xs, ds = zip(*[(100 * s, d) for s, d in c.all_points()])
                ax.plot(xs, ds, marker=marker, color=colour, label=c.series, alpha=0.9)
                es, knee = essential_and_knee(c.all_points())
                if es is not None and es > 0:
                    ax.axvline(100 * es, color=colour, linestyle=":", linewidth=1)
            ax.axhline(EPSILON, color="grey", linestyle="--", linewidth=1, label=f"ε = {EPSILON:g} point")
            ax.set_title(_wrap(f"{model} / {task} — {crit}", 4.6, 10), fontsize=10)
            ax.set_xlabel("sparsity, % of prunable weights that are zero (measured)")
            ax.set_ylabel("drop vs dense (points)")
            ax.margins(x=0.05)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(_wrap("OMP: score drop vs measured sparsity (dotted: essential sparsity)", width))
    return fig


def _cosine_figure(points: Sequence[CosinePoint]):
    from ..plots import _new_figure, _wrap, series_styles

    fig = _new_figure(5.6, 4.0)
    ax = fig.subplots()
    lines: dict[tuple, list[CosinePoint]] = {}
    for p in points:
        lines.setdefault((str(p.model), str(p.task), str(p.seed), str(p.path)), []).append(p)
    def label_of(ps: Sequence[CosinePoint]) -> str:
        return f"{ps[0].model} / {ps[0].task}" + (" (random init)" if ps[0].random_init else "")

    styles = series_styles(sorted({label_of(ps) for ps in lines.values()}))
    seen: set[str] = set()
    for key, ps in sorted(lines.items()):
        ps = sorted(ps, key=lambda p: p.sparsity)
        label = label_of(ps)
        first = label not in seen  # one legend entry per model × task (a line per run and seed)
        seen.add(label)
        colour, marker = styles[label]
        ax.plot([100 * p.sparsity for p in ps], [100 * p.cosine for p in ps], marker=marker, color=colour,
                label=label if first else None)
        ax.plot([100 * p.sparsity for p in ps], [100 * p.floor for p in ps], linestyle=":", marker="x", color=colour,
                label=f"{label}: random mask (floor)" if first else None)
    ax.axhline(100 * COSINE_PAPER, color="grey", linestyle="--", linewidth=1, label="paper: > 96%")
    ax.set_xlabel("sparsity of the IMP round, %")
    ax.set_ylabel("cosine similarity IMP vs OMP mask, %")
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.1)
    ax.legend(fontsize="small")
    fig.suptitle(_wrap("Mask similarity of IMP (lottery ticket) and OMP at equal sparsity", 5.6))
    return fig


def _save(fig, path: Path) -> Path | None:
    try:
        fig.savefig(path, dpi=110)
    except Exception:  # a plot must never cost the tables
        log.exception("plot %s failed", path.name)
        return None
    return path


# ----------------------------------------------------------------------------- claims
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _noise_check(c: Curve, verdict: str, es: float | None, knee: float | None, runs: Sequence[Run]) -> tuple[str, str]:
    """report.verdicts on a decided ES verdict: dense ≥ 10 points above the majority class,
    ≥ 3 seeds per point, and the points that decide it outside the seed noise (holds: every point
    up to ES has OMP − dense > −ε with its whole interval; does not hold: the knee's interval
    lies below −ε). Returns (verdict, note)."""
    if verdict not in (HOLDS, DOES_NOT_HOLD):
        return verdict, ""
    same = [r for r in runs if str(r.model) == str(c.model) and str(r.task) == str(c.task)]
    maj = majority_score(same, c.scale)
    dense = [x * c.scale for x in c.dense]
    why = reference_gate(stats(dense), maj)
    if why:
        return UNDECIDABLE, f"undecidable: {why}"
    if knee is not None and verdict == DOES_NOT_HOLD:
        decisive = [p for p in c.points if abs(p.sparsity - knee) < SPARSITY_BIN]
    else:
        decisive = [p for p in c.points if es is not None and p.sparsity <= es + SPARSITY_BIN / 2]
    few = min([len(dense)] + [len(p.scores) for p in decisive])
    if few < MIN_SEEDS:
        return UNDECIDABLE, f"undecidable: fewer than {MIN_SEEDS} seeds at a deciding point ({few})"
    for p in decisive:
        d = decide_difference([x * c.scale for x in p.scores], dense, -EPSILON, majority=maj, names=(f"OMP {_pct(p.sparsity)}", "dense"))
        if d.verdict != verdict:
            return UNDECIDABLE, f"undecidable at {_pct(p.sparsity)}: {d.text}"
    return verdict, f"dense {stats(dense)}, majority class {maj:.2f}; deciding points outside seed noise"


def _ess_claim(curves: Sequence[Curve], runs: Sequence[Run] = ()) -> Claim:
    claim = "OMP sparsity removable within 1 point of dense (bert-base), knee ≈ 60%"
    primary = [c for c in curves if c.judged and c.criterion == "magnitude" and not c.structured and c.scope == "global"]
    if not primary:
        primary = [c for c in curves if c.judged and c.criterion == "magnitude" and not c.structured]
    if not primary:
        if any(c.measurable and c.random_init for c in curves):
            why = ("n/a: only random-init models (model.random_init=true) have an OMP curve; their scores are at "
                   "chance and mean nothing, so no verdict (run a pretrained model)")
        elif curves:
            why = "n/a: no OMP curve with a dense (or 0%) run and a pruned run of the same model × task"
        else:
            why = "n/a: no OMP runs"
        return Claim(PAPER, claim, "30–50%", why, NOT_MEASURABLE)
    items, verdicts = [], []
    for c in primary:
        es, knee = essential_and_knee(c.all_points())
        top = max(p.sparsity for p in c.points)
        seeds = len(c.seeds)
        if knee is None:
            text = f"ES ≥ {_pct(es)} (no drop > ε up to {_pct(top)}; knee not reached)"
            v = HOLDS if 100 * es >= PAPER_ES_LOW - 1e-9 else NOT_MEASURABLE
        else:
            text = f"ES {_pct(es)}, knee {_pct(knee)}"
            v = HOLDS if 100 * (es or 0.0) >= PAPER_ES_LOW - 1e-9 else DOES_NOT_HOLD
        v, note = _noise_check(c, v, es, knee, runs)
        verdicts.append(v)
        items.append(f"{text} on {c.model}/{c.task} ({c.series}, {seeds} seed{'s' if seeds != 1 else ''}; ε = 1 point, measured sparsity)"
                     + (f" [{note}]" if note else ""))
    if DOES_NOT_HOLD in verdicts:
        verdict = DOES_NOT_HOLD
    elif UNDECIDABLE in verdicts:
        verdict = UNDECIDABLE
    elif NOT_MEASURABLE in verdicts:
        verdict = NOT_MEASURABLE
    else:
        verdict = HOLDS
    return Claim(PAPER, claim, "30–50%", "; ".join(items), verdict)


def _cosine_claim(points: Sequence[CosinePoint], curves: Sequence[Curve]) -> Claim:
    claim = "IMP (lottery ticket) and OMP masks are nearly the same inside the essential range (cosine similarity)"
    if not points:
        return Claim(PAPER, claim, "> 96–98%", "n/a: no IMP run with saved masks (masks/rounds.json)", NOT_MEASURABLE)
    es_of = {}
    for c in curves:
        if c.judged and c.criterion == "magnitude" and not c.structured:
            es, _ = essential_and_knee(c.all_points())
            if es is not None:
                es_of[(str(c.model), str(c.task))] = max(es, es_of.get((str(c.model), str(c.task)), 0.0))
    if all(p.random_init for p in points):
        return Claim(PAPER, claim, "> 96–98%", "n/a: only IMP runs of random-init models (model.random_init=true): "
                     "their masks say nothing about pretrained weights, so no verdict", NOT_MEASURABLE)
    points = [p for p in points if not p.random_init]
    real = [p for p in points if not p.trivial]
    if not real:
        return Claim(PAPER, claim, "> 96–98%", "n/a: only IMP rounds whose mask is the OMP mask by construction (cosine 1: a dense "
                     "round, or round 0 with dense_first=false); a pruned round after a trained one is needed", NOT_MEASURABLE)
    items, worst = [], []
    for model, task in sorted({(str(p.model), str(p.task)) for p in real}):
        mine = [p for p in real if (str(p.model), str(p.task)) == (model, task)]
        es = es_of.get((model, task))
        inside = [p for p in mine if es is not None and p.sparsity <= es + SPARSITY_BIN]
        if inside:
            used, where = inside, f"rounds ≤ ES {_pct(es)}"
        else:
            used, where = mine, (f"no pruned round at or below ES {_pct(es)}, so every round, all beyond it: stricter than "
                                 "the claim") if es is not None else "every round: ES not measured"
        low = min(used, key=lambda p: p.cosine)
        worst.append(low.cosine)
        items.append(f"min {100 * low.cosine:.1f}% at {_pct(low.sparsity)} on {model}/{task} "
                     f"(a random mask: {100 * low.floor:.1f}%; {where}, {len(used)} round(s))")
    verdict = HOLDS if min(worst) >= COSINE_PAPER - 1e-9 else DOES_NOT_HOLD
    return Claim(PAPER, claim, "> 96–98%", "; ".join(items), verdict)


# ----------------------------------------------------------------------------- section
def section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None:
    runs = training_runs(runs)  # evaluate/compress runs re-score a source run: not results of their own
    runs = for_claims(runs)  # the lr selected on validation per setting; scores on the held-out split (report.verdicts)
    if not any(_is_omp(r) for r in runs):
        return None
    out_dir = Path(out_dir)
    curves = build_curves(runs)
    cos_points = imp_cosines([r for r in runs if r.completed])
    unit = " (×100)" if curves and curves[0].scale != 1 else ""
    files: list[Path] = []
    md: list[str] = []

    md.append(f"One-shot magnitude pruning of the pretrained weights, then fine-tuning with the mask fixed. "
              f"x = **measured** sparsity (exact zeros among the prunable weights, `sparsity.overall`); dense runs "
              f"of the same model × task are s = 0. Drop = dense score − score, in points; ε = {EPSILON:g} point. "
              "**Essential sparsity** (ES): the largest measured s whose drop ≤ ε with every smaller s within ε too. "
              "**Knee**: the first measured s whose drop exceeds ε (the curve falls off between ES and the knee); "
              "\"not reached\" means the grid ends within ε and ES is a lower bound.")
    md.append("")
    rows = []
    for c in curves:
        if not c.dense:
            es_cell = knee_cell = "n/a: no dense or 0% run"
            drop_knee = "—"
        elif not c.points:
            es_cell = knee_cell = "n/a: no pruned run"
            drop_knee = "—"
        else:
            es, knee = essential_and_knee(c.all_points())
            es_cell = _pct(es) + ("" if knee is not None else " (lower bound)")
            knee_cell = _pct(knee) if knee is not None else f"not reached (≤ {_pct(max(p.sparsity for p in c.points))})"
            kp = next((p for p in c.points if knee is not None and abs(p.sparsity - knee) < 1e-12), None)
            drop_knee = fmt_num(c.drop(kp), 2) if kp is not None else "—"
        rows.append([c.model + (" (random init: no verdict)" if c.random_init else ""), c.task, c.series,
                     fmt_cell(c.dense, c.scale, 2) if c.dense else "—",
                     len(c.points), es_cell, knee_cell, drop_knee, len(c.seeds)])
    md.append(md_table(["model", "task", "criterion", f"dense score{unit}", "pruned points", "essential sparsity (%, measured)",
                        "knee (%, first drop > ε)", "drop at knee (points)", "seeds"], rows, "lllrrrrrr"))
    md.append("")
    detail = []
    for c in curves:
        for p in c.points:
            detail.append([c.model, c.task, c.series, f"{100 * p.sparsity:.2f}",
                           "—" if p.target is None else f"{100 * p.target:.0f}", fmt_cell(p.scores, c.scale, 2),
                           fmt_num(c.drop(p), 2) if c.dense else "—"])
    if detail:
        md.append("The curve (mean ± std (n) over seeds):")
        md.append("")
        md.append(md_table(["model", "task", "criterion", "sparsity (%, measured)", "target (%, config)", f"score{unit}",
                            "drop (points)"], detail, "lllrrrr"))
        md.append("")

    if any(c.measurable and c.random_init for c in curves):
        md.append("Curves marked \"random init\" come from models with random weights (`model.random_init=true`): their "
                  "scores are at chance, so they are neither drawn nor judged.")
        md.append("")
    if plots and any(c.judged for c in curves):
        fig = _curve_figure(curves)
        if fig is not None and _save(fig, out_dir / CURVE_PLOT):
            files.append(out_dir / CURVE_PLOT)
            md.append(f"![OMP drop vs measured sparsity]({CURVE_PLOT})")
            md.append("")

    if cos_points:
        md.append("IMP vs OMP masks (the paper's Figure 10): cosine similarity of each IMP round's keep-mask with the "
                  "one-shot magnitude mask of the pretrained weights at the same sparsity (`masks/rounds.json`), beside "
                  "the floor: a uniformly random mask of that sparsity (≈ 1 − s), which the IMP cosine must beat to mean anything.")
        md.append("")
        md.append(md_table(["model", "task", "IMP round sparsity (%)", "mask cosine to OMP (%)", "random mask cosine (%, floor)", "runs"],
                           [[m, t, f"{100 * s:.1f}", f"{100 * cs:.2f}", f"{100 * fl:.2f}", n] for m, t, s, cs, fl, n in _cosine_rows(cos_points)], "llrrrr"))
        md.append("")
        if plots:
            fig = _cosine_figure(cos_points)
            if _save(fig, out_dir / COSINE_PLOT):
                files.append(out_dir / COSINE_PLOT)
                md.append(f"![IMP vs OMP mask cosine similarity]({COSINE_PLOT})")
                md.append("")
    else:
        md.append("No IMP run with saved round masks: the IMP/OMP mask similarity is not drawn.")
        md.append("")

    judged = sorted({(str(c.model), str(c.task)) for c in curves if c.judged})
    if judged:
        md += ["Controls (the ES claim's gate, `report.verdicts`): " + "; ".join(
            controls_line(runs, m, t, curves[0].scale) for m, t in judged) + ". The curve's spread over seeds is the ± above.", ""]
    claims = [_ess_claim(curves, runs), _cosine_claim(cos_points, curves)]
    return Section(title="Essential Sparsity — OMP drop curve, essential sparsity and IMP/OMP masks",
                   markdown="\n".join(md).rstrip() + "\n", files=files, claims=claims)
