"""The five papers' headline numbers (METHODS.md) and how to put ours beside them.

Used by ``python -m sparse_ft.report ... --compare paper``. Works on plain records (one dict per
completed run, see records_from_runs) so the comparison rules read apart from the tables.

Our numbers come from whatever models/tasks the sweep ran (often MiniLM on MRPC on a laptop),
so "ours" is a sanity check of direction and rough size, not a reproduction claim; the table
says what each of our figures is computed from. GLUE averages follow the papers' protocol: per
task, the setting with the best mean validation score (aggregate.select_best).
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Any, Callable, Iterable, Sequence

CITATIONS = {
    "FISH": "Sung, Nair & Raffel, \"Training Neural Networks with Fixed Sparse Masks\", NeurIPS 2021 "
            "(arXiv:2111.09839); papers/fish_mask.txt",
    "PST": "Li, Luo, Tan, Wang, Huang, Li & Bai, \"Parameter-Efficient Sparsity for Large Language Models "
           "Fine-Tuning\", IJCAI 2022 (arXiv:2205.11005); papers/pst.txt",
    "ESS": "Jaiswal, Liu, Chen & Wang, \"The Emergence of Essential Sparsity in Large Pre-trained Models: "
           "The Weights that Matter\", NeurIPS 2023 (arXiv:2306.03805); papers/essential_sparsity.txt",
    "READ": "Nguyen, Wang, Li & Wu, \"READ: Recurrent Adaptation of Large Transformers\", 2023 "
            "(arXiv:2305.15348); papers/read.txt",
    "ERE": "\"Efficient Storage of Fine-Tuned Models via Low-Rank Approximation of Weight Residuals\" "
           "(Efficient Residual Encoding), 2023; papers/ere.txt",
}

# One entry per headline number. `kind` says how "ours" is computed (see _ours); `value` is the
# paper's number as a string, `num` the same as a float where one exists.
PAPER_HEADLINES: list[dict[str, Any]] = [
    {"paper": "FISH", "method": "fish", "kind": "glue_avg",
     "claim": "GLUE val avg, FISH mask 0.5% density (BERT-large); dense 82.5", "value": "82.5", "num": 82.5},
    {"paper": "FISH", "method": "dense", "kind": "glue_avg",
     "claim": "GLUE val avg, dense fine-tuning (BERT-large)", "value": "82.5", "num": 82.5},
    {"paper": "FISH", "method": "diff_pruning", "kind": "glue_avg_test",
     "claim": "GLUE test avg, Diff Pruning 0.5% (next best to FISH)", "value": "81.5", "num": 81.5},
    {"paper": "FISH", "method": "fish", "kind": "task_main", "task": "cifar10",
     "claim": "CIFAR-10 acc, 10% mask refreshed every epoch = standard training, 5× less storage",
     "value": "93.9", "num": 93.9},
    {"paper": "PST", "method": "pst", "kind": "trainable_pct",
     "claim": "trainable params at 90% sparsity (BERT-base), % of model", "value": "≈1.5%", "num": 1.5},
    {"paper": "PST", "method": "pst", "kind": "delta_vs", "others": ["map", "mvp"],
     "claim": "avg score gain over best of MaP/MvP at 90% sparsity (RoBERTa-large)", "value": "+0.73", "num": 0.73},
    {"paper": "ESS", "method": "omp", "kind": "essential_sparsity",
     "claim": "OMP sparsity removable within 1 point of dense (bert-base); knee ≈ 60%",
     "value": "30–50%", "num": None},
    {"paper": "READ", "method": "read", "kind": "rel_vs_dense", "field": "energy",
     "claim": "GPU energy vs full fine-tuning", "value": "−84%", "num": -84.0},
    {"paper": "READ", "method": "read", "kind": "rel_vs_dense", "field": "mem",
     "claim": "peak training memory vs full fine-tuning", "value": "−56%", "num": -56.0},
    {"paper": "ERE", "method": "ere", "kind": "storage_pct",
     "claim": "storage, % of dense fp32 (RoBERTa-large GLUE, r=256, b=4)", "value": "6.0%", "num": 6.0},
    {"paper": "ERE", "method": "ere", "kind": "glue_avg",
     "claim": "GLUE avg with ERE (r=256, b=4) vs 89.4 uncompressed (RoBERTa-large)", "value": "89.2", "num": 89.2},
]

_ALIASES = {
    "fish": "fish", "fishmask": "fish",
    "dense": "dense", "full": "dense", "fullft": "dense", "finetune": "dense", "fullfinetune": "dense",
    "fullfinetuning": "dense", "ft": "dense",
    "diffpruning": "diff_pruning", "diff": "diff_pruning",
    "random": "random", "randommask": "random", "bitfit": "bitfit",
    "pst": "pst", "map": "map", "magnitude": "map", "mvp": "mvp", "movement": "mvp",
    "omp": "omp", "lth": "lth", "imp": "lth", "nm": "nm",
    "read": "read", "ere": "ere", "bitq": "bitq", "lra": "lra",
}
_GLUE = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}


def canonical_method(name: Any) -> str:
    n = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return _ALIASES.get(n, n)


def _is_glue(task: Any) -> bool:
    t = re.sub(r"[^a-z0-9]", "", str(task).lower())
    t = t[4:] if t.startswith("glue") else t
    return t in _GLUE or t.startswith("mnli")


def _mean(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def records_from_runs(runs: Sequence[Any], label: Callable[[Any], str] = lambda run: "",
                      selected: Callable[[Any], bool] = lambda run: True,
                      variant: Callable[[Any], str] = lambda run: "") -> list[dict]:
    """One plain dict per completed run (duck-typed on collect.Run); `label(run)` names the run's
    setting, `variant(run)` its non-searched part (e.g. the density), `selected(run)` says whether
    it belongs to the setting the protocol selected for its task."""
    out = []
    for r in runs:
        setting = label(r)
        setting = "" if setting in ("—", None) else setting
        var = variant(r)
        var = "" if var in ("—", None) else var
        out.append({
            "method": canonical_method(r.method), "method_raw": str(r.method), "task": str(r.task),
            "setting": setting, "main": r.main, "test_main": r.test_main, "energy": r.energy[0],
            "mem": r.peak_train_bytes, "updated_fraction": r.updated_fraction,
            "trainable_fraction": r.trainable_fraction, "storage_ratio": r.storage_ratio_min,
            "sparsity": r.sparsity, "selected": bool(selected(r)), "variant": var,
        })
    return out


def _by(records: Iterable[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _join(items: list[str], limit: int = 4) -> str:
    return "; ".join(items[:limit]) + (f"; … (+{len(items) - limit})" if len(items) > limit else "")


def _label(setting: str) -> str:
    return f" [{setting}]" if setting else ""


def _ours(h: dict, recs: list[dict], scale: float) -> str:
    """Our figure for headline `h`, with what it is computed from; "—" and why when we can't."""
    mine = [r for r in recs if r["method"] == h["method"]]
    if not mine:
        return f"— (no {h['method']} runs)"
    kind = h["kind"]

    if kind in ("glue_avg", "glue_avg_test"):
        return _glue_avg(h, mine, scale)

    if kind == "task_main":
        items = []
        for (task, setting), rs in sorted(_by(mine, "task", "setting").items()):
            if re.sub(r"[^a-z0-9]", "", task.lower()).startswith(h["task"]):
                m = _mean(r["main"] for r in rs)
                if m is not None:
                    items.append(f"{m * scale:.2f} on {task}{_label(setting)}")
        return _join(items) if items else f"— (no {h['method']} runs on {h['task']})"

    if kind == "trainable_pct":
        items = []
        for (setting,), rs in sorted(_by(mine, "setting").items()):
            m = _mean(r["trainable_fraction"] for r in rs)
            if m is None:
                m = _mean(r["updated_fraction"] for r in rs)
                what = "updated"
            else:
                what = "trainable"
            if m is not None:
                items.append(f"{100 * m:.3g}% {what}{_label(setting)}")
        return _join(items) if items else "— (no params figures)"

    if kind == "storage_pct":
        items = []
        for (setting,), rs in sorted(_by(mine, "setting").items()):
            m = _mean(r["storage_ratio"] for r in rs)
            if m is not None:
                items.append(f"{100 * m:.3g}% (smallest artifact){_label(setting)}")
        return _join(items) if items else "— (no storage ratios in summary.json)"

    if kind == "rel_vs_dense":
        dense = [r for r in recs if r["method"] == "dense"]
        if not dense:
            return "— (no dense runs to compare with)"
        items = []
        for (task,), rs in sorted(_by(mine, "task").items()):
            a = _mean(r[h["field"]] for r in rs)
            b = _mean(r[h["field"]] for r in dense if r["task"] == task)
            if a is not None and b:
                items.append(f"{100 * (a / b - 1):+.1f}% on {task}")
        return _join(items) if items else f"— (no {h['field']} figures for both on one task)"

    if kind == "delta_vs":
        others = [r for r in recs if r["method"] in h["others"]]
        if not others:
            return f"— (no {'/'.join(h['others'])} runs)"
        deltas = []
        for (task, sp), rs in _by(mine, "task", "sparsity").items():
            a = _mean(r["main"] for r in rs)
            best = [_mean(r["main"] for r in g) for (m,), g in
                    _by([o for o in others if o["task"] == task and _close(o["sparsity"], sp)], "method").items()]
            best = [b for b in best if b is not None]
            if a is not None and best:
                deltas.append((a - max(best)) * scale)
        if not deltas:
            return "— (no task/sparsity shared with MaP/MvP)"
        return f"{statistics.fmean(deltas):+.2f} (mean over {len(deltas)} task×sparsity pair(s))"

    if kind == "essential_sparsity":
        dense = [r for r in recs if r["method"] == "dense"]
        items = []
        for (task,), rs in sorted(_by(mine, "task").items()):
            base = _mean(r["main"] for r in dense if r["task"] == task)
            if base is None:
                base = _mean(r["main"] for r in rs if r["sparsity"] is not None and r["sparsity"] < 1e-9)
            if base is None:
                continue
            levels = {}
            for (sp,), g in _by([r for r in rs if r["sparsity"] is not None], "sparsity").items():
                m = _mean(r["main"] for r in g)
                if m is not None:
                    levels[round(sp, 4)] = m
            ok = [sp for sp, m in levels.items() if (m - base) * scale >= -1.0]
            if levels:
                items.append(f"{task}: {100 * max(ok):.0f}%" if ok else f"{task}: <{100 * min(levels):.0f}%")
        return _join(items) if items else "— (need dense or 0%-sparsity runs on the same task)"

    return "—"


def _glue_avg(h: dict, mine: list[dict], scale: float) -> str:
    """Mean over GLUE tasks of the selected setting's per-task mean (validation, or test at the
    setting selected on validation)."""
    field = "test_main" if h["kind"] == "glue_avg_test" else "main"
    note = ""
    if field == "test_main" and all(r["test_main"] is None for r in mine):
        field, note = "main", " (no test metrics; validation shown)"
    chosen = [dict(r, variant=r.get("variant", "")) for r in mine if r.get("selected", True)]
    items = []
    for (variant,), rs in sorted(_by(chosen, "variant").items()):
        per_task = {t: _mean(x[field] for x in g) for (t,), g in _by(rs, "task").items() if _is_glue(t)}
        per_task = {t: v for t, v in per_task.items() if v is not None}
        if per_task:
            items.append(f"{statistics.fmean(per_task.values()) * scale:.2f} over {', '.join(sorted(per_task))}"
                         + _label(variant))
    if not items:
        return f"— (no GLUE {h['method']} runs with scores)"
    return _join(items) + " (best setting per task by validation)" + note


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < 5e-3


def comparison_rows(records: Sequence[dict], scale: float = 100.0) -> list[list[str]]:
    return [[h["paper"], h["method"], h["claim"], h["value"], _ours(h, list(records), scale)]
            for h in PAPER_HEADLINES]


def comparison_markdown(records: Sequence[dict], scale: float = 100.0) -> str:
    rows = comparison_rows(records, scale)

    def esc(x: str) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| paper | method | headline | paper value | ours |", "| --- | --- | --- | ---: | --- |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    lines.append("")
    lines.append(("Scores ×100. " if scale != 1 else "") + "\"ours\" is computed from this sweep's completed runs (its own models, tasks and "
                 "budgets), so it checks direction and rough size, not a reproduction of the paper's setting.")
    lines.append("")
    lines += [f"- [{k}] {v}" for k, v in CITATIONS.items()]
    return "\n".join(lines)
