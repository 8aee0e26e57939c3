"""ERE (papers/ere.txt, METHODS.md §5): score vs storage of compressed full fine-tunes.

Reads the `job=compress` runs of ERE and its two baselines (BITQ, LRA). Each names its source
run (summary.json `source.path`, config.yaml `source`): the uncompressed fine-tune whose score
the compressed one is compared with (the source run's directory when it is among `runs` or still
on disk, otherwise the `source.main` the compress job copied). Storage is the artifact's bytes on
disk over the dense fp32 checkpoint's (`storage.artifacts`, `storage.dense_fp32_bytes`).

"Within 1 point" means the reconstruction's main score *and* (where the task reports one) its F1
are at most 1 point (of 100) below the source run's; an improvement counts as within. A setting is
compressed from several source runs (the dense fine-tunes of seeds 1, 2, 3), so its drop is a
paired figure per source; a claim takes a setting as within 1 point only when ≥ 3 sources give a
95% t-interval of the mean drop wholly ≤ 1, and as not within when it lies wholly above 1
(report.verdicts.decide_mean); otherwise the claim is undecidable. A claim on a model/task whose
source scores less than 10 points above the majority class is "undecidable on this proxy"
(report.verdicts). BITQ and LRA "need more storage than ERE for the same score" is read as: the
least storage within 1 point, ERE's beyond the noise below any baseline setting's that may be. Beside the score: the reconstruction's fidelity to θ' (agreement of
predictions, mean KL of the output distributions; summary.json `fidelity`) and the rank-0 control
(`method.rank_prior=0`: no residual).

The points are read from the runs in `ere_points.py` and drawn in `ere_plot.py`; the analysis,
claims, tables and the section are here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from ..collect import Run
from ..render import fmt_cell, fmt_num, md_table
from ..verdicts import UNDECIDABLE, reference_gate, stats
from . import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, Claim, Section
from .ere_plot import score_vs_storage_figure
from .ere_points import (LABELS, METHODS, TOLERANCE, Point, Setting, by, collect_points, collect_settings, fmt_int,
                         fmt_pct, groups_of)

log = logging.getLogger(__name__)

PAPER = "ERE"
STORAGE_CAP = 10.0  # % of dense fp32: the storage the verdict allows (the paper: 6.0%)
PAPER_STORAGE, PAPER_R, PAPER_B = 6.0, 256, 4
PAPER_ERE, PAPER_DENSE = 89.2, 89.4
PLOT = "ere_score_vs_storage.png"


# ----------------------------------------------------------------------------- analysis
def cheapest_within(items: Sequence) -> Point | Setting | None:
    """The point or setting with the least storage whose (mean) drop is within TOLERANCE, or None."""
    ok = [p for p in items if p.within and p.storage_pct is not None]
    return min(ok, key=lambda p: p.storage_pct) if ok else None


def cheapest(settings: Sequence[Setting], verdicts: tuple[str, ...], cap: float = math.inf) -> Setting | None:
    """The least-storage setting at ≤ `cap` % whose drop decision (`Setting.decision`) is one of
    `verdicts`: (HOLDS,) = decidedly within 1 point; (HOLDS, UNDECIDABLE) = may be within."""
    ok = [st for st in settings if st.storage_pct is not None and st.storage_pct <= cap
          and st.decision.verdict in verdicts]
    return min(ok, key=lambda st: st.storage_pct) if ok else None


def _on(group: tuple, points: Sequence[Point]) -> str:
    """'minilm on sst2, source seeds 1, 2, 3': what a figure was measured on."""
    seeds = sorted({str(p.source_seed) for p in points if p.group == group and p.source_seed is not None})
    seed = f", source seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" if seeds else ""
    return f"{group[0]} on {group[1]}{seed}"


def _drop_text(st: Setting) -> str:
    out = f"{st.decision.text} pts; main {fmt_num(st.score, 2)} vs {fmt_num(st.source_score, 2)} uncompressed"
    if st.f1_drop is not None:
        out += f", F1 {fmt_num(st.f1, 2)} vs {fmt_num(st.source_f1, 2)}"
    return out


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
    why = source_gate(by(points, group=group))
    if why:
        texts[-1] += f"; undecidable: {why}"
        ok[-1] = None


def rank0_control(settings: Sequence[Setting]) -> str:
    """The rank-0 control per model/task (ERE r=0: no residual, θ plus the tensors stored as they
    are): what a claim's drop must be told apart from."""
    out = []
    for g in groups_of(settings):
        zero = [st for st in by(settings, method="ere", group=g) if st.rank == 0]
        if zero:
            z = zero[0]
            out.append(f"{g[0]} / {g[1]}: rank 0 scores {fmt_cell(z.values('score'), decimals=2)} (drop "
                       f"{fmt_cell(z.values('drop'), decimals=2)} pts, {fmt_pct(z.storage_pct)} of dense, agreement "
                       f"with θ' {'n/a' if z.agreement is None else f'{100 * z.agreement:.1f}%'})")
        else:
            out.append(f"{g[0]} / {g[1]}: rank-0 control not run (`method=ere method.rank_prior=0`)")
    return "; ".join(out)


def _storage_claim(mine: Sequence[Setting]) -> tuple[str, bool | None, Setting | None]:
    """Claim 1 on one model/task's ERE settings: (text, ok, the setting it rests on). Holds when a
    setting at ≤ STORAGE_CAP % is decidedly within 1 point; does not hold when every setting at
    ≤ STORAGE_CAP % is decidedly not; otherwise undecidable."""
    pick = cheapest(mine, (HOLDS,), STORAGE_CAP)
    if pick is not None:
        return (f"{fmt_pct(pick.storage_pct)} of dense fp32 bytes at {pick.setting}, the least storage within "
                f"{TOLERANCE:g} point beyond the seed noise ({_drop_text(pick)})"), True, pick
    maybe = cheapest(mine, (UNDECIDABLE,), STORAGE_CAP)
    if maybe is not None:
        return (f"no ERE setting at ≤ {STORAGE_CAP:g}% decidedly within {TOLERANCE:g} point; the least storage "
                f"that may be: {fmt_pct(maybe.storage_pct)} at {maybe.setting} ({_drop_text(maybe)})"), None, maybe
    scored = [st for st in mine if st.worst_drop is not None]
    least = min(scored, key=lambda st: st.worst_drop, default=None)
    return (f"no ERE setting at ≤ {STORAGE_CAP:g}% within {TOLERANCE:g} point (smallest drop "
            + (f"{fmt_num(least.worst_drop, 2)} pts at {least.setting}, {fmt_pct(least.storage_pct)}" if least else "—")
            + ")"), False, least


def _baseline_claim(ere: Sequence[Setting], base: Sequence[Setting], label: str) -> tuple[str, bool | None]:
    """Claim 3 against one baseline on one model/task: does the baseline need more storage than ERE
    to stay within 1 point of the uncompressed score? Holds when ERE is decidedly within at less
    storage than any baseline setting that may be within; does not hold when the baseline is
    decidedly within at no more storage than any ERE setting that may be; otherwise undecidable."""
    e_sure, e_maybe = cheapest(ere, (HOLDS,)), cheapest(ere, (HOLDS, UNDECIDABLE))
    b_sure, b_maybe = cheapest(base, (HOLDS,)), cheapest(base, (HOLDS, UNDECIDABLE))

    def where(st: Setting | None) -> str:
        return "none" if st is None else f"{fmt_pct(st.storage_pct)} ({st.setting}, drop {fmt_cell(st.values('worst_drop'), decimals=2)})"

    text = (f"vs {label}: the least storage within {TOLERANCE:g} point beyond the seed noise: ERE {where(e_sure)}, "
            f"{label} {where(b_sure)}; the least that may be within: ERE {where(e_maybe)}, {label} {where(b_maybe)}")
    if e_sure is not None and (b_maybe is None or e_sure.storage_pct < b_maybe.storage_pct):
        return text + f": ERE's is below every {label} setting that may be within (holds)", True
    if b_sure is not None and (e_maybe is None or b_sure.storage_pct <= e_maybe.storage_pct):
        return text + f": {label}'s is at or below every ERE setting that may be within (does not hold)", False
    return text + "; undecidable: within seed noise", None


def claims(points: Sequence[Point]) -> list[Claim]:
    settings = collect_settings(points)
    ere = by(settings, method="ere")
    groups = groups_of(ere)
    out = []

    # 1. storage: the cheapest ERE setting decidedly within 1 point, per model/task
    texts, ok, picks = [], [], {}
    for g in groups:
        mine = by(ere, group=g)
        text, good, picks[g] = _storage_claim(mine)
        paper_setting = [st for st in mine if st.rank == PAPER_R and st.bits == PAPER_B]
        at_paper = (f"; at the paper's r={PAPER_R}, b={PAPER_B}: {fmt_pct(paper_setting[0].storage_pct)}"
                    if paper_setting else "")
        texts.append(f"{text}; {_on(g, points)}{at_paper}")
        ok.append(good)
        _gate(texts, ok, points, g)
    out.append(Claim(
        PAPER, f"storage {PAPER_STORAGE}% of dense at r={PAPER_R}, b={PAPER_B} (RoBERTa-large GLUE) at nearly "
               f"the uncompressed score (ours holds at ≤ {TOLERANCE:g} point drop with ≤ {STORAGE_CAP:g}% storage)",
        f"{PAPER_STORAGE}% of dense", "; ".join(texts) if texts else "n/a: no ERE compress run",
        _verdict(ok) if texts else NOT_MEASURABLE))

    # 2. score: the drop at claim 1's setting (else the one closest to the paper's 6% storage)
    texts, ok = [], []
    for g in groups:
        mine = [st for st in by(ere, group=g) if st.drop is not None and st.storage_pct is not None]
        if not mine:
            continue
        pick = picks.get(g) if picks.get(g) in mine else min(
            mine, key=lambda st: (abs(math.log(st.storage_pct / PAPER_STORAGE)) if st.storage_pct > 0 else math.inf))
        verdict = pick.decision.verdict
        texts.append(f"{_drop_text(pick)} at {pick.setting} ({fmt_pct(pick.storage_pct)} of dense); {_on(g, points)}"
                     + ("" if str(g[1]).lower() == "glue" else " (one task, not a GLUE average)"))
        ok.append(None if verdict == UNDECIDABLE else verdict == HOLDS and pick.storage_pct <= STORAGE_CAP)
        _gate(texts, ok, points, g)
    out.append(Claim(
        PAPER, f"GLUE avg {PAPER_ERE} with ERE vs {PAPER_DENSE} uncompressed (r={PAPER_R}, b={PAPER_B}, "
               f"RoBERTa-large; ours holds at ≤ {TOLERANCE:g} point drop with ≤ {STORAGE_CAP:g}% storage)",
        f"{PAPER_ERE} vs {PAPER_DENSE} (−{PAPER_DENSE - PAPER_ERE:.1f})",
        "; ".join(texts) if texts else "n/a: no ERE run with both its own and its source's score",
        _verdict(ok) if texts else NOT_MEASURABLE))

    # 3. the baselines need more storage than ERE to stay within 1 point
    texts, ok = [], []
    for g in groups:
        for base in ("bitq", "lra"):
            mine = by(settings, method=base, group=g)
            if not mine:
                continue
            text, good = _baseline_claim(by(ere, group=g), mine, LABELS[base])
            texts.append(f"{text}; {_on(g, points)}")
            ok.append(good)
            _gate(texts, ok, points, g)
    out.append(Claim(
        PAPER, f"BITQ and LRA alone need more storage than ERE for the same score (ours: the least storage "
               f"within {TOLERANCE:g} point of the uncompressed score)",
        "Table 1: BITQ, LRA larger than ERE",
        "; ".join(texts) if texts else "n/a: no BITQ/LRA compress run beside ERE runs of the same model/task",
        _verdict(ok) if texts else NOT_MEASURABLE))
    return out


# ----------------------------------------------------------------------------- tables
_SHORT = {HOLDS: "yes", DOES_NOT_HOLD: "no", UNDECIDABLE: "undecidable"}


def settings_table(settings: Sequence[Setting], multi_group: bool) -> str:
    """One row per setting: mean ± std (n sources) of the score and the paired drop, and whether the
    drop is within 1 point beyond the seed noise (`Setting.decision`)."""
    has_f1 = any(st.f1 is not None for st in settings)
    header = (["model / task"] if multi_group else []) + [
        "method", "rank prior r", "bits b", "storage (% of dense fp32)", "artifact (MiB)", "score (main, pts)",
        "source (pts)", "drop (pts)"]
    if has_f1:
        header += ["F1 (pts)", "F1 drop (pts)"]
    has_fid = any(st.agreement is not None for st in settings)
    if has_fid:
        header += ["agreement with θ' (%)", "KL(θ' ‖ rec.) (nats)"]
    header += [f"within {TOLERANCE:g} point (95% CI)", "compress (s)"]
    rows = []
    for st in settings:
        bits = ("fp32" if st.bits == 32 else "fp16") if st.method == "lra" else fmt_int(st.bits)
        rank = fmt_int(st.rank) if st.method != "ere" or st.rank is not None else f"budget {fmt_num(st.budget_fraction)}"
        row = ([f"{st.group[0]} / {st.group[1]}"] if multi_group else []) + [
            LABELS[st.method] + (f" ({st.extra})" if st.extra else ""), rank, bits, fmt_pct(st.storage_pct),
            fmt_num(None if st.artifact_bytes is None else st.artifact_bytes / (1 << 20), 3),
            fmt_cell(st.values("score"), decimals=2), fmt_cell(st.values("source_score"), decimals=2),
            fmt_cell(st.values("drop"), decimals=2)]
        if has_f1:
            row += [fmt_cell(st.values("f1"), decimals=2), fmt_cell(st.values("f1_drop"), decimals=2)]
        if has_fid:
            row += [fmt_num(None if st.agreement is None else 100 * st.agreement, 2),
                    "—" if st.kl is None else f"{st.kl:.3g}"]
        row += [_SHORT.get(st.decision.verdict, st.decision.verdict), fmt_num(st.seconds, 1)]
        rows.append(row)
    return md_table(header, rows, ("l" if multi_group else "") + "lrrrrrrr" + ("rr" if has_f1 else "")
                    + ("rr" if has_fid else "") + "lr")


def budget_table(settings: Sequence[Setting]) -> str:
    rows = []
    for g in groups_of(settings):
        for method in METHODS:
            mine = by(settings, method=method, group=g)
            if not mine:
                continue
            best, sure = cheapest_within(mine), cheapest(mine, (HOLDS,))
            surely = "none" if sure is None else f"{sure.setting} ({fmt_pct(sure.storage_pct)})"
            if best is None:
                scored = [st for st in mine if st.worst_drop is not None]
                least = min(scored, key=lambda st: st.worst_drop) if scored else None
                rows.append([f"{g[0]} / {g[1]}", LABELS[method], f"none of {len(mine)}", "—",
                             f"least: {fmt_num(least.worst_drop, 2)} at {least.setting} ({fmt_pct(least.storage_pct)})"
                             if least else "—", surely])
            else:
                rows.append([f"{g[0]} / {g[1]}", LABELS[method], best.setting, fmt_pct(best.storage_pct),
                             fmt_cell(best.values("worst_drop"), decimals=2), surely])
    return md_table(["model / task", "method", f"least storage within {TOLERANCE:g} point (mean drop)",
                     "storage (% of dense fp32)", "drop (pts, worse of main and F1)",
                     "least storage within beyond the seed noise"], rows, "llllrl")


def floor_note(settings: Sequence[Setting]) -> str:
    """How far the least-storage setting of each model/task falls: a 1-point rule says little where
    even a near-empty residual stays within a point or two (a weak source near its trivial classifier)."""
    out = []
    for g in groups_of(settings):
        mine = [st for st in by(settings, group=g) if st.storage_pct is not None and st.worst_drop is not None]
        if not mine:
            continue
        low = min(mine, key=lambda st: st.storage_pct)
        out.append(f"On {g[0]} / {g[1]} the least storage measured ({LABELS[low.method]} {low.setting}, "
                   f"{fmt_pct(low.storage_pct)}) loses {fmt_num(low.drop, 2)} pts main"
                   + (f", {fmt_num(low.f1_drop, 2)} pts F1" if low.f1_drop is not None else "")
                   + "; a drop within 1 point means little where this is not well above 1.")
    return " ".join(out)


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
    multi = len(groups_of(points)) > 1
    cl = claims(points)
    settings = collect_settings(points)
    n_sources = len({p.source for p in points})
    lines = [
        f"Compressed full fine-tunes (`job=compress`): {len(points)} runs of "
        + ", ".join(f"{LABELS[m]} ({len(by(points, method=m))})" for m in METHODS if by(points, method=m))
        + f" over {n_sources} source run{'s' if n_sources != 1 else ''} ("
        + "; ".join(_on(g, points) for g in groups_of(points)) + "). "
        "Storage is the compressed artifact's bytes on disk (codes, scales, D, the tensors stored as they are and "
        "the header) over the dense fp32 checkpoint's; the score is the reconstructed model's main validation metric, "
        "the drop is the source run's score minus it (points; negative = better than uncompressed), paired per "
        "source and given as mean ± sample std (n sources). A drop is *within 1 point* for the claims only beyond the "
        "seed noise: ≥ 3 sources and the 95% t-interval of the mean drop wholly ≤ 1 (`report.verdicts.decide_mean`).",
        "",
    ]
    if files:
        lines += [f"![score vs storage]({PLOT})", ""]
    elif plot_note:
        lines += [plot_note, ""]
    lines += ["### Every setting", "", settings_table(settings, multi), "",
              f"### The least storage within {TOLERANCE:g} point of the uncompressed score", "",
              budget_table(settings), "",
              f"Within {TOLERANCE:g} point: the drop of the main score and, where the task reports F1, of F1 are both "
              f"≤ {TOLERANCE:g}. " + floor_note(settings), "",
              "Controls: " + rank0_control(settings) + "; majority class of the validation split: " + "; ".join(
                  f"{g[0]} / {g[1]} {fmt_num(next((p.majority for p in by(points, group=g) if p.majority is not None), None), 2)}"
                  for g in groups_of(points)) + ". Fidelity (agreement of the reconstruction's predictions with θ''s, and "
              "the mean KL divergence of their output distributions, from `fidelity` in the compress run's summary.json) "
              "shows how much of θ' a setting keeps where the score cannot tell.", "",
              "### Paper vs ours", "",
              md_table(["claim", "paper", "ours", "verdict"], [[c.claim, c.paper_value, c.ours, c.verdict] for c in cl]),
              ""]
    return Section(title="ERE — efficient residual encoding", markdown="\n".join(lines), files=files, claims=cl)
