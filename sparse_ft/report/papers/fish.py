"""FISH Mask (papers/fish_mask.txt, METHODS.md §1): FISH against a random mask and dense
fine-tuning per density, the Fisher-samples ablation, and where the mask lands.

* density table: per model × task, FISH and random-mask scores (mean ± std over seeds) at each
  `method.density`, beside dense fine-tuning of the same model × task;
* claims, decided by report.verdicts (dense ≥ 10 points above the majority class, ≥ 3 seeds,
  the difference outside the seed noise; else "undecidable on this proxy"): "0.5% ≈ dense"
  (FISH − dense > −1 point), "FISH > random mask at every density", "32 samples already give the
  best mask" (N = 32 within 1 point of the best N, and above N = 0, the random mask);
* controls beside them: the majority-class score, the random-mask floor, dense's spread over seeds;
* where the mask lands: the share of the mask in the largest module types
  (`method_report.mask_by_type`), per run setting — e.g. with and without `method.head_warmup_steps`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from ..aggregate import is_dense_method
from ..collect import Run, training_runs
from ..render import fmt_cell, md_table
from ..verdicts import combine, decide_difference, for_claims, majority_score
from . import NOT_MEASURABLE, Claim, Section

PAPER = "FISH"
EPSILON = 1.0  # points


def _opt(run: Run, key: str) -> Any:
    return run.flat_config.get(f"method.{key}")


def _scale(runs: Sequence[Run]) -> float:
    scores = [r.main for r in runs if r.main is not None]
    return 100.0 if scores and all(abs(s) <= 1 for s in scores) else 1.0


def _mean(runs: Sequence[Run], scale: float) -> float | None:
    vals = [r.main * scale for r in runs if r.main is not None]
    return statistics.fmean(vals) if vals else None


def _scores(runs: Sequence[Run], scale: float) -> list[float]:
    return [r.main * scale for r in runs if r.main is not None]


def _majority(cells: dict, scale: float) -> float | None:
    return majority_score([r for rs in cells.values() for r in rs], scale)


def _where(key: tuple) -> str:
    return f"{key[0]} on {key[1]}"


def _default_samples(run: Run) -> bool:
    return _opt(run, "head_warmup_steps") in (None, 0)


def collect(runs: Sequence[Run]):
    """(model, task) → {"dense": [runs], ("fish"|"random_mask", density): [runs]} and the
    samples ablation (model, task, density) → {N: [runs]}. The density grid takes the FISH runs
    at the most frequent N of that model × task (the others belong to the ablation only)."""
    grid: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    samples: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    fish_by_key: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if not r.completed or r.main is None:
            continue
        key = (r.model, r.task)
        if is_dense_method(r.method):
            grid[key]["dense"].append(r)
        elif r.method == "random_mask" and _default_samples(r):
            grid[key][("random_mask", float(_opt(r, "density")))].append(r)
        elif r.method == "fish" and _default_samples(r):
            fish_by_key[key].append(r)
    for key, rs in fish_by_key.items():
        counts: dict[int, int] = defaultdict(int)
        for r in rs:
            counts[int(_opt(r, "num_samples") or 0)] += 1
        usual = max(counts, key=lambda n: (counts[n], n))
        for r in rs:
            n, density = int(_opt(r, "num_samples") or 0), float(_opt(r, "density"))
            samples[key + (density,)][n].append(r)
            if n == usual:
                grid[key][("fish", density)].append(r)
    samples = {k: v for k, v in samples.items() if len(v) >= 3}
    return grid, samples


def density_table(grid: dict, scale: float) -> str:
    rows = []
    for key, cells in grid.items():
        densities = sorted({d for k in cells if k != "dense" for d in [k[1]]})
        dense = fmt_cell((r.main for r in cells.get("dense", [])), scale, 2) if cells.get("dense") else "n/a: no dense run"
        for d in densities:
            fish = cells.get(("fish", d), [])
            rand = cells.get(("random_mask", d), [])
            rows.append([key[0], key[1], f"{100 * d:g}", fmt_cell((r.main for r in fish), scale, 2) if fish else "n/a: not run",
                         fmt_cell((r.main for r in rand), scale, 2) if rand else "n/a: not run", dense])
    return md_table(["model", "task", "density %", "FISH score", "random mask score", "dense score"], rows, "lllrrr")


def samples_table(samples: dict, scale: float) -> str:
    rows = []
    for key, by_n in samples.items():
        for n in sorted(by_n):
            rows.append([key[0], key[1], f"{100 * key[2]:g}", n if n else "0 (random mask)",
                         fmt_cell((r.main for r in by_n[n]), scale, 2)])
    return md_table(["model", "task", "density %", "Fisher samples N", "score"], rows, "lllrr")


def mask_table(runs: Sequence[Run], top: int = 3) -> str:
    """Share of the mask in the largest module types, per setting (seeds averaged)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        if r.completed and r.method in ("fish", "random_mask") and r.main is not None:
            key = (r.method, r.model, r.task, float(_opt(r, "density")), _opt(r, "num_samples"), _opt(r, "head_warmup_steps") or 0)
            groups[key].append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        shares: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            by_type = {k[len("method_report.mask_by_type."):]: v for k, v in r.flat_summary.items()
                       if k.startswith("method_report.mask_by_type.") and isinstance(v, (int, float))}
            total = sum(by_type.values())
            for name, v in by_type.items():
                shares[name].append(v / total if total else 0.0)
        if not shares:
            continue
        mean = {name: sum(v) / len(rs) for name, v in shares.items()}
        biggest = sorted(mean.items(), key=lambda kv: -kv[1])[:top]
        method, model, task, density, n, warm = key
        rows.append([method, model, task, f"{100 * density:g}", "—" if n is None else n, warm, len(rs),
                     fmt_cell((r.main for r in rs), _scale(rs), 2),
                     "; ".join(f"{name}: {100 * v:.1f}%" for name, v in biggest)])
    if not rows:
        return ""
    return md_table(["method", "model", "task", "density %", "N", "head warm-up steps", "seeds", "score",
                     f"largest {top} module types (mean share of the mask)"], rows, "llllrrrrl")


def _on(grid_keys: Sequence[tuple]) -> str:
    return ", ".join(_where(k) for k in grid_keys)


def dense_claim(grid: dict, scale: float) -> Claim:
    claim, paper = "FISH at 0.5% density matches dense fine-tuning (GLUE val avg, BERT-large)", "82.5 vs 82.5"
    decisions = []
    for key, cells in grid.items():
        fish, dense = cells.get(("fish", 0.005), []), cells.get("dense", [])
        if fish and dense:
            d = decide_difference(_scores(fish, scale), _scores(dense, scale), -EPSILON, majority=_majority(cells, scale),
                                  names=("FISH 0.5%", "dense"))
            decisions.append((key, d))
    if not decisions:
        return Claim(PAPER, claim, paper, "n/a: no FISH 0.5% run beside a dense run of the same model × task", NOT_MEASURABLE)
    ours = "; ".join(f"{_where(k)}: {d.text}" for k, d in decisions) + f" (claim: FISH − dense > −{EPSILON:g} point)"
    return Claim(PAPER, claim, paper, ours, combine([d for _, d in decisions]))


def random_claim(grid: dict, scale: float) -> Claim:
    claim, paper = "FISH beats a random mask of the same density at every density (0.1%, 0.5%, 2%)", "every density"
    decisions = []
    for key, cells in grid.items():
        for k, fish in cells.items():
            if k == "dense" or k[0] != "fish":
                continue
            rand = cells.get(("random_mask", k[1]))
            if rand:
                d = decide_difference(_scores(fish, scale), _scores(rand, scale), 0.0,
                                      reference=_scores(cells.get("dense", []), scale) or None,
                                      majority=_majority(cells, scale), names=("FISH", "random"))
                decisions.append((key, k[1], d))
    if not decisions:
        return Claim(PAPER, claim, paper, "n/a: no FISH and random-mask runs at a common density", NOT_MEASURABLE)
    ours = "; ".join(f"{100 * dens:g}% on {_where(key)}: {d.text}" for key, dens, d in sorted(decisions, key=lambda p: (str(p[0]), p[1])))
    return Claim(PAPER, claim, paper, ours, combine([d for _, _, d in decisions]))


def samples_claim(samples: dict, scale: float, grid: dict | None = None) -> Claim:
    claim, paper = "32 Fisher samples already give the best mask (0 samples = random mask)", "N = 32"
    for key, by_n in samples.items():
        if 32 in by_n and len(set(by_n) - {0, 32}) >= 1 and len(by_n) >= 3:
            means = {n: _mean(rs, scale) for n, rs in by_n.items()}
            best = max((n for n in means if means[n] is not None and n not in (0, 32)), key=lambda n: means[n])
            cells = (grid or {}).get(key[:2], {})
            dense = _scores(cells.get("dense", []), scale) or None
            majority = majority_score([r for rs in by_n.values() for r in rs], scale) or _majority(cells, scale)
            parts = [decide_difference(_scores(by_n[32], scale), _scores(by_n[best], scale), -EPSILON, reference=dense,
                                       majority=majority, names=("N=32", f"best other N={best}"))]
            if 0 in by_n:
                parts.append(decide_difference(_scores(by_n[32], scale), _scores(by_n[0], scale), 0.0, reference=dense,
                                               majority=majority, names=("N=32", "N=0 (random)")))
            ours = ", ".join(f"N={n}: {means[n]:.2f}" for n in sorted(means)) + f" ({_where(key[:2])}, {100 * key[2]:g}%)"
            ours += "".join(f"; {d.text}" for d in parts)
            if dense is None:
                ours += "; no dense run of this model × task: the majority-class gate uses the best N"
            return Claim(PAPER, claim, paper, ours, combine(parts))
    return Claim(PAPER, claim, paper, "n/a: no samples ablation with N = 32 and two other N", NOT_MEASURABLE)


def baselines_table(runs: Sequence[Run], grid: dict, scale: float) -> str:
    """BitFit and Diff Pruning beside FISH (the paper's Table 1 baselines), per model × task of the grid."""
    rows = []
    for key in grid:
        cells = []
        for method in ("bitfit", "diff_pruning"):
            mine = [r for r in runs if r.completed and r.main is not None and r.method == method and (r.model, r.task) == key]
            dens = sorted({_opt(r, "density") for r in mine if _opt(r, "density") is not None})
            cells.append(fmt_cell((r.main for r in mine), scale, 2) + (f" at {', '.join(f'{100 * d:g}%' for d in dens)}" if dens else "")
                         if mine else "n/a: not run")
        if any(not c.startswith("n/a") for c in cells):
            rows.append([key[0], key[1], *cells])
    return md_table(["model", "task", "BitFit score", "Diff Pruning score"], rows, "llrr") if rows else ""


def controls_table(grid: dict, scale: float) -> str:
    """The floors each claim is read against: the majority class of the evaluation split, the
    random mask (the method's own floor) and the spread of dense over seeds."""
    rows = []
    for key, cells in grid.items():
        maj = _majority(cells, scale)
        dense = cells.get("dense", [])
        rand = [r for k, rs in cells.items() if k != "dense" and k[0] == "random_mask" for r in rs]
        rows.append([key[0], key[1], "n/a: not recorded (data.majority_class_score)" if maj is None else f"{maj:.2f}",
                     fmt_cell((r.main for r in dense), scale, 2) if dense else "n/a: no dense run",
                     "n/a" if maj is None or not dense else f"{_mean(dense, scale) - maj:+.2f}",
                     fmt_cell((r.main for r in rand), scale, 2) if rand else "n/a: not run"])
    return md_table(["model", "task", "majority-class score", "dense (mean ± std, n)", "dense − majority (points)",
                     "random mask, all densities"], rows, "llrrrr")


def section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None:
    runs = training_runs(runs)  # evaluate/compress runs re-score a source run: not results of their own
    runs = for_claims(runs)  # the lr selected on validation per setting; scores on the held-out split (report.verdicts)
    grid, samples = collect(runs)
    grid = {k: v for k, v in grid.items() if any(m != "dense" for m in v)}
    masked = [r for r in runs if r.completed and r.method in ("fish", "random_mask")]
    if not grid and not samples and not masked:
        return None
    scale = _scale([r for r in runs if r.completed])
    parts = []
    if grid:
        parts += ["Scores ×100, mean ± sample std (n seeds).", "", density_table(grid, scale), "",
                  "Controls: the majority-class score of the evaluation split and the random-mask floor.", "",
                  controls_table(grid, scale), ""]
        beside = baselines_table(runs, grid, scale)
        if beside:
            parts += ["The paper's other baselines beside FISH (no claim of their own here):", "", beside, ""]
    if samples:
        parts += ["### Fisher samples ablation", "", samples_table(samples, scale), ""]
    masks = mask_table(runs)
    if masks:
        parts += ["### Where the mask lands", "",
                  "From `method_report.mask_by_type`: through a randomly initialised head most of the mask can fall "
                  "in the pooler; `method.head_warmup_steps` trains the head alone first.", "", masks, ""]
    claims = [dense_claim(grid, scale), random_claim(grid, scale), samples_claim(samples, scale, grid)]
    return Section(title="FISH Mask — FISH vs random mask vs dense, Fisher samples, where the mask lands",
                   markdown="\n".join(parts).rstrip(), files=[], claims=claims)
