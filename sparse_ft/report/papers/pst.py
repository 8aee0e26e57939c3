"""PST (papers/pst.txt, METHODS.md §2): magnitude pruning (MaP), movement pruning (MvP) and PST on
the cubic schedule, compared on score, **measured** sparsity and trainable parameters.

Runs: `method=magnitude` (MaP), `method=movement` (MvP), `method=pst`. A table row is one
model × task × method × target sparsity (`method.sparsity`, the schedule's end point); its
sparsity column is the measured one (summary.json `sparsity.overall`, exact zeros of the final
weights), its score the mean ± std over seeds (×100 where the metric is a fraction), its
trainable % on two bases: `params.trainable_fraction` (entries the optimizer may change over the
model's parameters; MvP counts its scores too) and `params.trainable_fraction_mvp_basis`, the
paper's basis — over MvP's trainables, all weights plus one score per prunable weight (BERT-base:
PST's 2,821,634 of ~194M = 1.45%, the paper's "1.5%"; 2.58% of the model's 110M).
A MvP cell whose run reported `method_report.at_chance` (its best accuracy no better than the
majority class: the score lr erased the |W| start) is marked "at chance" and named in the claims.

Claims compare methods on the same model × task at the same **measured** sparsity (within
`MATCH` = 1 percentage point of 90% or 50%):

Score claims are decided by ``report.verdicts`` (a dense run of the same model × task ≥ 10 points
above the majority class, ≥ 3 seeds, each difference outside the seed noise; else "undecidable"):

* "at 90% PST > MvP > MaP": holds when the order holds on every model × task that has all three;
  ours also gives PST − best(MaP, MvP) (the paper: +0.73 on RoBERTa-large);
* "PST trains ≈1.5% of the parameters at 90%": on the paper's basis (MvP's trainables); holds
  when our mean lies within a factor 2 of 1.5% (0.75–3%); the fraction depends on the model's
  shape (embeddings, head);
* "MaP is best at 50%": holds when MaP > each of MvP, PST on every model × task that has MaP and at
  least one of them.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..collect import Run, training_runs
from ..render import fmt_cell, fmt_num, md_table
from ..verdicts import combine, controls_line, decide_difference, dense_reference, for_claims, majority_score
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section

log = logging.getLogger(__name__)

PAPER = "PST"
METHODS = ("magnitude", "movement", "pst")
LABELS = {"magnitude": "MaP", "movement": "MvP", "pst": "PST"}
MATCH = 0.01            # measured sparsities within 1 point of the claim's level are "at" it
HIGH, LOW = 0.9, 0.5
PAPER_TRAINABLE = 1.5   # % of MvP's trainables (weights + scores) trained by PST at 90% sparsity (BERT-base)
TRAINABLE_BAND = (PAPER_TRAINABLE / 2, PAPER_TRAINABLE * 2)
PLOT = "pst_score_vs_sparsity.png"
_COLOURS = {"magnitude": "tab:orange", "movement": "tab:green", "pst": "tab:blue"}
_MARKERS = {"magnitude": "s", "movement": "^", "pst": "o"}

_ALIASES = {"map": "magnitude", "magnitude": "magnitude", "mvp": "movement", "movement": "movement", "pst": "pst"}


def method_of(run: Run) -> str | None:
    return _ALIASES.get(str(run.method).lower())


@dataclass
class Cell:
    """One model × task × method × target sparsity, over seeds."""

    model: str
    task: str
    method: str
    target: float | None
    runs: list[Run] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [r.main for r in self.runs if r.main is not None]

    @property
    def score(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def sparsity(self) -> float | None:
        xs = [r.sparsity for r in self.runs if r.sparsity is not None]
        return statistics.fmean(xs) if xs else None

    @property
    def trainable(self) -> float | None:
        xs = [r.trainable_fraction for r in self.runs if r.trainable_fraction is not None]
        return statistics.fmean(xs) if xs else None

    @property
    def trainable_mvp_basis(self) -> float | None:
        """`params.trainable_fraction_mvp_basis`: the paper's basis (MvP's weights + scores)."""
        xs = [_params(r).get("trainable_fraction_mvp_basis") for r in self.runs]
        xs = [float(x) for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool)]
        return statistics.fmean(xs) if xs else None

    @property
    def at_chance(self) -> int:
        """Runs that reported a chance-level result (`method_report.at_chance`, MvP)."""
        return sum(1 for r in self.runs if ((r.summary or {}).get("method_report") or {}).get("at_chance") is True)


def _params(run: Run) -> dict:
    p = (run.summary or {}).get("params")
    return p if isinstance(p, dict) else {}


def _target(run: Run) -> float | None:
    m = run.config.get("method")
    v = m.get("sparsity") if isinstance(m, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def build_cells(runs: Sequence[Run]) -> list[Cell]:
    cells: dict[tuple, Cell] = {}
    for r in runs:
        m = method_of(r)
        if m is None or not r.completed or r.main is None:
            continue
        key = (str(r.model), str(r.task), m, _target(r))
        cells.setdefault(key, Cell(*key)).runs.append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(cells.values(), key=lambda c: (c.model, c.task, -1 if c.target is None else c.target, order[c.method]))


def _score_scale(cells: Sequence[Cell]) -> float:
    scores = [s for c in cells for s in c.scores]
    return 100.0 if scores and all(abs(v) <= 1.0 for v in scores) else 1.0


def at_level(cells: Sequence[Cell], level: float) -> dict[tuple, dict[str, Cell]]:
    """(model, task) → method → the cell whose measured sparsity is within MATCH of `level`."""
    out: dict[tuple, dict[str, Cell]] = {}
    for c in cells:
        if c.sparsity is not None and c.score is not None and abs(c.sparsity - level) <= MATCH + 1e-12:
            best = out.setdefault((c.model, c.task), {}).get(c.method)
            if best is None or abs(c.sparsity - level) < abs(best.sparsity - level):
                out[(c.model, c.task)][c.method] = c
    return out


def _seeds(cells: Sequence[Cell]) -> str:
    n = sorted({len(c.scores) for c in cells})
    return f"{'/'.join(map(str, n))} seed{'s' if n != [1] else ''}"


def _decide(a: Cell, b: Cell, runs: Sequence[Run], scale: float):
    dense = dense_reference(runs, a.model, a.task)
    return decide_difference([x * scale for x in a.scores], [x * scale for x in b.scores], 0.0,
                             reference=[r.main * scale for r in dense] or None,
                             majority=majority_score(dense + a.runs + b.runs, scale), names=(LABELS[a.method], LABELS[b.method]))


def order_claim(cells: Sequence[Cell], scale: float, runs: Sequence[Run] = ()) -> Claim:
    claim = "at 90% sparsity PST > MvP > MaP on score (PST beats the best of MaP/MvP)"
    paper = "PST > MvP > MaP; PST +0.73 over the best (RoBERTa-large GLUE avg)"
    items, decisions = [], []
    for (model, task), by in sorted(at_level(cells, HIGH).items()):
        if not all(m in by for m in METHODS):
            continue
        pst, mvp, map_ = (by[m].score * scale for m in ("pst", "movement", "magnitude"))
        ds = [_decide(by["pst"], by["movement"], runs, scale), _decide(by["movement"], by["magnitude"], runs, scale)]
        decisions += ds
        items.append(f"PST {pst:.2f}, MvP {mvp:.2f}{_chance_note(by['movement'])}, MaP {map_:.2f} (PST − best {pst - max(mvp, map_):+.2f} points) "
                     f"on {model}/{task} at measured {100 * by['pst'].sparsity:.1f}% ({_seeds(list(by.values()))}): "
                     + "; ".join(d.text for d in ds))
    if not decisions:
        return Claim(PAPER, claim, paper, "n/a: no model × task with MaP, MvP and PST runs at ≈90% measured sparsity", NOT_MEASURABLE)
    return Claim(PAPER, claim, paper, " | ".join(items), combine(decisions))


def _chance_note(cell: Cell) -> str:
    return f" [at chance in {cell.at_chance}/{len(cell.runs)} run(s): method.score_lr too large for the run's length]" if cell.at_chance else ""


def trainable_claim(cells: Sequence[Cell]) -> Claim:
    claim = "PST trains ≈1.5% of the parameters at 90% sparsity"
    paper = f"≈{PAPER_TRAINABLE:g}%"
    paper = f"≈{PAPER_TRAINABLE:g}% of MvP's trainables (weights + scores)"
    pst = [c for by in at_level(cells, HIGH).values() for m, c in by.items() if m == "pst" and c.trainable_mvp_basis is not None]
    if not pst:
        return Claim(PAPER, claim, paper, "n/a: no PST run at ≈90% measured sparsity with params.trainable_fraction_mvp_basis", NOT_MEASURABLE)
    items = [f"{100 * c.trainable_mvp_basis:.2f}% of MvP's trainables ({fmt_num(None if c.trainable is None else 100 * c.trainable, 2)}% "
             f"of the model's parameters) on {c.model}/{c.task} (measured sparsity {100 * c.sparsity:.1f}%)" for c in pst]
    values = [100 * c.trainable_mvp_basis for c in pst]
    lo, hi = TRAINABLE_BAND
    verdict = HOLDS if all(lo <= v <= hi for v in values) else DOES_NOT_HOLD
    return Claim(PAPER, claim, paper, "; ".join(items) + f" (holds within {lo:g}–{hi:g}%)", verdict)


def low_sparsity_claim(cells: Sequence[Cell], scale: float, runs: Sequence[Run] = ()) -> Claim:
    claim = "at 50% sparsity MaP is the best of MaP/MvP/PST on score"
    paper = "MaP best at 50%"
    items, decisions = [], []
    for (model, task), by in sorted(at_level(cells, LOW).items()):
        if "magnitude" not in by or len(by) < 2:
            continue
        scores = {m: by[m].score * scale for m in METHODS if m in by}
        ds = [_decide(by["magnitude"], by[m], runs, scale) for m in METHODS if m in by and m != "magnitude"]
        decisions += ds
        items.append(", ".join(f"{LABELS[m]} {v:.2f}{_chance_note(by[m])}" for m, v in scores.items())
                     + f" on {model}/{task} at measured {100 * by['magnitude'].sparsity:.1f}% ({_seeds(list(by.values()))}): "
                     + "; ".join(d.text for d in ds))
    if not decisions:
        return Claim(PAPER, claim, paper, "n/a: no model × task with MaP and MvP or PST at ≈50% measured sparsity", NOT_MEASURABLE)
    return Claim(PAPER, claim, paper, " | ".join(items), combine(decisions))


def _figure(cells: Sequence[Cell], scale: float):
    from matplotlib.colors import to_rgba

    from ..plots import _new_figure, _wrap

    panels = sorted({(c.model, c.task) for c in cells if c.sparsity is not None})
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    width = 4.6 * ncols + 1.4
    fig = _new_figure(width, 3.8 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = {}
    for ax, (model, task) in zip(axes.flat, panels):
        for m in METHODS:
            mine = sorted((c for c in cells if (c.model, c.task, c.method) == (model, task, m) and c.sparsity is not None),
                          key=lambda c: c.sparsity)
            if not mine:
                continue
            ys = [c.score * scale for c in mine]
            errs = [statistics.stdev(c.scores) * scale if len(c.scores) > 1 else 0.0 for c in mine]
            handles[m] = ax.errorbar([100 * c.sparsity for c in mine], ys, yerr=errs if any(errs) else None,
                                     color=_COLOURS[m], marker=_MARKERS[m], markerfacecolor=to_rgba(_COLOURS[m], 0.35),
                                     markersize=7, capsize=3, label=LABELS[m])  # see-through: a point under another shows
        ax.set_title(f"{model} / {task}", fontsize=10)
        ax.set_xlabel("sparsity, % of prunable weights that are zero (measured)")
        ax.set_ylabel("main score" + (" (×100)" if scale != 1 else ""))
        ax.margins(x=0.1)
        ax.grid(True, alpha=0.3)
    fig.legend([handles[m] for m in METHODS if m in handles], [LABELS[m] for m in METHODS if m in handles],
               loc="outside right upper", fontsize="small", title="method")
    fig.suptitle(_wrap("MaP / MvP / PST: score vs measured sparsity (mean ± std over seeds)", width - 1.6))  # not under the legend
    return fig


def section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None:
    runs = training_runs(runs)  # evaluate/compress runs re-score a source run: not results of their own
    runs = for_claims(runs)  # the lr selected on validation per setting; scores on the held-out split (report.verdicts)
    if not any(method_of(r) is not None for r in runs):
        return None
    out_dir = Path(out_dir)
    cells = build_cells(runs)
    scale = _score_scale(cells)
    unit = " (×100)" if scale != 1 else ""
    md = ["Gradual pruning on the cubic schedule (dense for the first 10% of steps, the target sparsity for the "
          "last 30%). Sparsity is **measured** on the final weights (`sparsity.overall`); trainable % on two bases: "
          "`params.trainable_fraction` (of the model's parameters; MvP: weights + scores) and "
          "`params.trainable_fraction_mvp_basis` (of MvP's trainables, weights + one score per prunable weight: the paper's basis). "
          "A score marked *at chance* comes from a MvP run whose best accuracy was no better than the majority class "
          "(`method.score_lr` too large for the run's length). Claims compare methods at the same measured sparsity "
          f"(within {100 * MATCH:g} point of 90% / 50%).", ""]
    rows = [[c.model, c.task, LABELS[c.method], "—" if c.target is None else f"{100 * c.target:g}",
             fmt_num(None if c.sparsity is None else 100 * c.sparsity, 2),
             fmt_cell(c.scores, scale, 2) + (f" (at chance: {c.at_chance}/{len(c.runs)})" if c.at_chance else ""),
             fmt_num(None if c.trainable is None else 100 * c.trainable, 3),
             fmt_num(None if c.trainable_mvp_basis is None else 100 * c.trainable_mvp_basis, 3)] for c in cells]
    if rows:
        md.append(md_table(["model", "task", "method", "target sparsity (%, config)", "sparsity (%, measured)",
                            f"score{unit}", "trainable (% of params)", "trainable (% of MvP's trainables, paper)"], rows, "lllrrrrr"))
    else:
        md.append("No completed MaP / MvP / PST run with a score.")
    md.append("")
    files: list[Path] = []
    if plots and cells:
        fig = _figure(cells, scale)
        if fig is not None:
            try:
                fig.savefig(out_dir / PLOT, dpi=110)
                files.append(out_dir / PLOT)
                md += [f"![score vs measured sparsity]({PLOT})", ""]
            except Exception:  # a plot must never cost the tables
                log.exception("plot %s failed", PLOT)
    panels = sorted({(c.model, c.task) for c in cells})
    if panels:
        md += ["Controls (the score claims' gate, `report.verdicts`): " + "; ".join(controls_line(runs, m, t, scale) for m, t in panels)
               + ". The spread over seeds is the ± in the table.", ""]
    claims = [order_claim(cells, scale, runs), trainable_claim(cells), low_sparsity_claim(cells, scale, runs)]
    return Section(title="PST — MaP, MvP and PST: score, measured sparsity and trainable parameters",
                   markdown="\n".join(md).rstrip() + "\n", files=files, claims=claims)
