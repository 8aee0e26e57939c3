"""Markdown: the selected (paper-protocol) table, the per-setting detail tables, the list of
runs that did not complete, and report.md as a whole."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

from .aggregate import Analysis, Group, glue_average, main_metric_name, mean_std, setting_label
from .collect import ENERGY_SOURCES, Run, as_number, find_run

MiB = float(1 << 20)


# ----------------------------------------------------------------------------- formatting
def _decimals(m: float) -> int:
    if m == 0:
        return 2
    return int(min(8, max(0, 2 - math.floor(math.log10(abs(m))))))


def fmt_num(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "—"
    d = _decimals(value) if decimals is None else decimals
    return f"{value:.{d}f}"


def fmt_cell(values: Iterable[Any], scale: float = 1.0, decimals: int | None = None) -> str:
    """`mean ± std (n)`; sample std, shown as "—" for a single run; "—" for no data."""
    m, s, n = mean_std(values)
    if n == 0:
        return "—"
    m *= scale
    d = _decimals(m) if decimals is None else decimals
    sd = "—" if s is None else f"{s * scale:.{d}f}"
    return f"{m:.{d}f} ± {sd} ({n})"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    align = align or ("l" * len(header))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
             "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bullets(notes: Sequence[str]) -> str:
    return "\n".join(f"- {n}" for n in notes)


# ----------------------------------------------------------------------------- shared columns
def _score_cell(an: Analysis, values: Iterable[Any]) -> str:
    return fmt_cell(values, an.score_scale, 2 if an.score_scale != 1 else None)


def _unit(an: Analysis) -> str:
    return " (×100)" if an.score_scale != 1 else ""


def _any(an: Analysis, attr: str) -> bool:
    return any(getattr(r, attr) is not None for r in an.completed)


def _efficiency_columns(an: Analysis) -> list[tuple[str, Callable[[Sequence[Run]], str]]]:
    """(header, cell over a list of runs). Updated and trainable are two separate figures and
    neither is a sparsity; sparsity and added params appear only where a run measured them."""
    cols: list[tuple[str, Callable[[Sequence[Run]], str]]] = [
        ("updated %", lambda rs: fmt_cell((r.updated_fraction for r in rs), 100.0)),
        ("trainable %", lambda rs: fmt_cell((r.trainable_fraction for r in rs), 100.0)),
    ]
    if _any(an, "added"):
        cols.append(("added params", lambda rs: fmt_cell((r.added for r in rs), 1.0, 0)))
    if _any(an, "sparsity"):
        cols.append(("sparsity %", lambda rs: fmt_cell((r.sparsity for r in rs), 100.0)))
    cols += [
        ("energy kWh", lambda rs: fmt_cell(r.energy[0] for r in rs)),
        ("peak mem MiB", lambda rs: fmt_cell((None if r.peak_train_bytes is None else r.peak_train_bytes / MiB)
                                             for r in rs)),
        ("train samples/s", lambda rs: fmt_cell(r.samples_per_s for r in rs)),
    ]
    return cols


def _energy_note(an: Analysis) -> str:
    if not an.energy_sources:
        return "no run reported an energy figure"
    parts = [f"`energy.{s}` ({n} run{'s' if n != 1 else ''})" for s, n in an.energy_sources.items()]
    return ("per run the first available of " + " > ".join(f"`{s}`" for s in ENERGY_SOURCES)
            + "; used: " + ", ".join(parts))


def _column_notes(an: Analysis) -> list[str]:
    notes = [
        "updated % = 100 × `params.updated_fraction`: entries whose bits differ from the pretrained "
        "weights (a dense run stays below 100% where e.g. embedding rows of unseen tokens never move); "
        "trainable % = 100 × `params.trainable_fraction`: entries the optimizer could change. "
        "Neither is a sparsity.",
    ]
    if _any(an, "added"):
        notes.append("added params = `params.added`: parameters that did not exist in the pretrained model.")
    if _any(an, "sparsity"):
        notes.append("sparsity % = 100 × `sparsity.overall`: the measured fraction of zero weights.")
    notes.append("energy kWh: " + _energy_note(an) + ".")
    notes.append("peak mem MiB = `memory.peak_bytes.train` / 2^20; train samples/s = `time.train_samples_per_s`.")
    return notes


# ----------------------------------------------------------------------------- selected table
def protocol_paragraph(an: Analysis) -> str:
    tuned = ", ".join(f"`{k}`" for k in an.tuned_keys) or "none varies in these runs"
    variant = ", ".join(f"`{k}`" for k in an.variant_keys)
    mname = main_metric_name(an.completed)
    return (
        "Protocol (the papers'): for each task and method, runs are grouped by setting (hyper-parameters, "
        "seeds pooled) and the setting with the best mean validation score over seeds is selected "
        f"(score = `metrics.main`{f', {mname}' if mname else ''}, the task's selection metric on its "
        "validation split; higher is better; ties go to more seeds, then the first setting). "
        f"Searched hyper-parameters: {tuned}"
        + (f"; these keys define separate rows instead of being searched: {variant}" if variant else "")
        + ". The GLUE average is the unweighted mean over tasks of the selected rows' means. Test figures "
        "(`metrics.test.main`, where a run evaluated a labelled test split) are reported at the setting "
        "selected on validation and never used to select. Every setting's figures are in the detail "
        "sections below."
    )


def _selected_groups(an: Analysis, method: Any, variant: tuple) -> dict[Any, Group]:
    out = {}
    for t in an.tasks:
        choice = an.choice(method, variant, t)
        if choice is not None:
            out[t] = choice.group
    return out


def _glue_cell(an: Analysis, per_task: dict[Any, Group], attr: str) -> tuple[str, bool]:
    means = {t: g.mean(attr) for t, g in per_task.items()}
    avg, have = glue_average(means, an.glue_tasks)
    if avg is None:
        return "—", False
    partial = len(have) < len(an.glue_tasks)
    cell = fmt_num(avg * an.score_scale, 2)
    return (cell + f" † ({len(have)}/{len(an.glue_tasks)})" if partial else cell), partial


def selected_table(an: Analysis) -> str:
    unit = _unit(an)
    has_test = _any(an, "test_main")
    eff = _efficiency_columns(an)
    header = ["method", "variant"] + [f"{t} main{unit}" for t in an.tasks]
    if an.glue_tasks:
        header.append(f"GLUE avg{unit}")
        if has_test:
            header.append(f"GLUE test avg{unit}")
    header += [h for h, _ in eff]
    rows, partial = [], False
    for method, variant in an.variant_rows():
        per_task = _selected_groups(an, method, variant)
        row = [method, an.label(method, variant)]
        row += [_score_cell(an, (r.main for r in per_task[t].runs)) if t in per_task else "—" for t in an.tasks]
        if an.glue_tasks:
            for attr in ("main", "test_main") if has_test else ("main",):
                cell, part = _glue_cell(an, per_task, attr)
                row.append(cell)
                partial |= part
        runs = [r for g in per_task.values() for r in g.runs]
        row += [cell(runs) for _, cell in eff]
        rows.append(row)
    notes = [f"Cells: mean ± sample std (n runs, one per seed) at the selected setting; ± — when n = 1"
             f"{'; scores ×100' if an.score_scale != 1 else ''}. Efficiency columns pool the selected runs of "
             "every task of the row."]
    if an.glue_tasks:
        notes.append("GLUE avg = unweighted mean of the selected per-task means over: "
                     + ", ".join(str(t) for t in an.glue_tasks)
                     + (". † = this row lacks some of those tasks; averaged over the ones it has." if partial else "."))
    notes += _column_notes(an)
    return md_table(header, rows, "ll" + "r" * (len(header) - 2)) + "\n\n" + _bullets(notes)


def selection_table(an: Analysis) -> str:
    """Which setting won, per method × variant × task, out of how many."""
    unit = _unit(an)
    has_test = _any(an, "test_main")
    header = ["method", "variant", "task", "selected setting", "settings tried", f"validation main{unit}"]
    if has_test:
        header.append(f"test main{unit}")
    rows = []
    for (method, variant, task), choice in sorted(an.selected.items(), key=lambda kv: _choice_order(an, kv[0])):
        g = choice.group
        row = [method, an.label(method, variant), task, setting_label(g.tuned), choice.candidates,
               _score_cell(an, (r.main for r in g.runs))]
        if has_test:
            row.append(_score_cell(an, (r.test_main for r in g.runs)))
        rows.append(row)
    return md_table(header, rows, "llllr" + "r" * (len(header) - 5))


def _choice_order(an: Analysis, key: tuple) -> tuple:
    method, variant, task = key
    rows = an.variant_rows()
    return (rows.index((method, variant)), an.tasks.index(task))


# ----------------------------------------------------------------------------- detail tables
def settings_table(an: Analysis) -> str:
    """Method × setting rows, tasks as columns: every setting, not only the selected ones."""
    unit = _unit(an)
    eff = _efficiency_columns(an)
    header = ["method", "setting"] + [f"{t} main{unit}" for t in an.tasks]
    if an.glue_tasks:
        header.append(f"GLUE avg{unit}")
    header += [h for h, _ in eff]
    rows, partial = [], False
    for method, setting in an.rows():
        per_task = {t: g for t in an.tasks if (g := an.group(method, t, setting)) is not None}
        row = [method, an.label(method, setting)]
        row += [_score_cell(an, (r.main for r in per_task[t].runs)) if t in per_task else "—" for t in an.tasks]
        if an.glue_tasks:
            cell, part = _glue_cell(an, per_task, "main")
            row.append(cell)
            partial |= part
        row += [cell(r for g in per_task.values() for r in g.runs) for _, cell in eff]
        rows.append(row)
    notes = []
    if an.glue_tasks:
        notes.append("GLUE avg at one fixed setting = unweighted mean of its per-task means over: "
                     + ", ".join(str(t) for t in an.glue_tasks)
                     + (". † = this row lacks some of those tasks." if partial else "."))
    if an.settings:
        notes.append("setting = the config keys that vary across runs (seed, task.* and method.name aside): "
                     + ", ".join(f"`{k}`" for k in an.settings)
                     + "; a row's label shows those that vary within its method, plus density/sparsity.")
    if an.task_bound:
        notes.append("varying with the task only (not a setting): " + ", ".join(f"`{k}`" for k in an.task_bound) + ".")
    table = md_table(header, rows, "ll" + "r" * (len(header) - 2))
    return table + ("\n\n" + _bullets(notes) if notes else "")


def detail_table(an: Analysis) -> str:
    unit = _unit(an)
    has_test = _any(an, "test_main")
    eff = _efficiency_columns(an)
    header = ["method", "task", "setting", f"main{unit}"] + ([f"test main{unit}"] if has_test else [])
    header += [h for h, _ in eff] + ["wall s"]
    rows = []
    for g in an.groups:
        row = [g.method, g.task, an.label(g.method, g.setting), _score_cell(an, (r.main for r in g.runs))]
        if has_test:
            row.append(_score_cell(an, (r.test_main for r in g.runs)))
        row += [cell(g.runs) for _, cell in eff] + [fmt_cell(r.wall_s for r in g.runs)]
        rows.append(row)
    return md_table(header, rows, "lll" + "r" * (len(header) - 3))


def problems_section(an: Analysis) -> str:
    probs = an.problems
    if not probs:
        return "All runs completed."
    rows = [[str(r.path), r.status, r.method or "—", r.task or "—", r.seed if r.seed is not None else "—",
             r.error.strip().splitlines()[-1][:300] if r.error and r.error.strip() else "—"]
            for r in probs]
    return (f"{len(probs)} run(s) did not complete; they are listed here and never averaged into the tables.\n\n"
            + md_table(["run dir", "status", "method", "task", "seed", "error"], rows))


# ----------------------------------------------------------------------------- evaluate / compress
def _source_method(run: Run, source: Run | None) -> Any:
    block = (run.summary or {}).get("source")
    named = block.get("method") if isinstance(block, dict) else None
    return named or (source.method if source is not None else None)


def derived_table(an: Analysis) -> str:
    """The completed evaluate and compress runs, one row each, beside their source run's score:
    re-evaluations and compressions of a result, never averaged with training runs."""
    unit = _unit(an)
    done = sorted((r for r in an.derived if r.completed),
                  key=lambda r: (r.job, str(r.task), str(r.model), str(r.method), str(r.path)))
    if not done:
        return ""
    header = ["job", "method", "source's method", "task", "model", "seed", f"score{unit}", f"source's score{unit}",
              "Δ vs source (points)", "artifact % of dense", "run dir", "source run"]
    rows = []
    for r in done:
        src = find_run(r.source_path, an.runs)
        src_method = _source_method(r, src)
        # an evaluate run scores the source's weights: its method is the source's (older summaries said "dense")
        method = (src_method or r.method) if r.job == "evaluate" else r.method
        block = (r.summary or {}).get("source")
        src_main = src.main if src is not None and src.completed else None
        if src_main is None and isinstance(block, dict):
            src_main = as_number(block.get("main"))
        delta = None if r.main is None or src_main is None else (r.main - src_main) * an.score_scale
        ratio = r.storage_ratio_min if r.job == "compress" else None
        rows.append([r.job, method if method is not None else "— (weights file)", src_method or "—", r.task, r.model,
                     r.seed if r.seed is not None else "—", fmt_num(None if r.main is None else r.main * an.score_scale, 2),
                     fmt_num(None if src_main is None else src_main * an.score_scale, 2),
                     "—" if delta is None else f"{delta:+.2f}", "—" if ratio is None else f"{100 * ratio:.3g}%",
                     r.path.name, r.source_path or "—"])
    notes = ["One row per completed `job=evaluate` (the source run's final weights scored again) or `job=compress` "
             "(the source's weights compressed by the method, then scored) run. They are results of their source run, "
             "not training runs: never averaged into the tables above, never a setting. Δ = score − source's score."]
    return md_table(header, rows, "lllllrrrrrll") + "\n\n" + _bullets(notes)


# ----------------------------------------------------------------------------- report.md
def headline(an: Analysis) -> str:
    """The selected table (what the CLI prints), or why there is none."""
    if not an.groups:
        derived = derived_table(an)
        return "_No completed training runs: nothing to average._" + (
            "\n\nEvaluate and compress runs:\n\n" + derived if derived else "")
    return selected_table(an)


def render_report(an: Analysis, paths: Sequence[Any], plot_status: dict[str, str | None],
                  plot_names: Sequence[str], paper_md: str | None = None) -> str:
    n_ok = len(an.completed_any)
    parts = [
        "# sparse-ft report", "",
        f"{len(an.runs)} run dir(s) under {', '.join(f'`{p}`' for p in paths)}: {n_ok} completed, "
        f"{len(an.runs) - n_ok} not completed. Full per-run figures: `results.csv`.", "",
        "## Results: best setting per task (paper protocol)", "",
    ]
    if an.groups:
        parts += [protocol_paragraph(an), "", selected_table(an), "",
                  "### Selected setting per method × task", "", selection_table(an), "",
                  "## Detail: every setting (method × setting, columns: tasks)", "", settings_table(an), "",
                  "## Detail: per method × task × setting", "", detail_table(an)]
    derived = derived_table(an)
    if not an.groups:
        parts.append("_No completed training runs: nothing to average._")
    if derived:
        parts += ["", "## Evaluate and compress runs (results of a source run, not training runs)", "", derived]
    parts += ["", "## Failed, interrupted and unfinished runs", "", problems_section(an), "", "## Plots", ""]
    for name in plot_names:
        why = plot_status.get(name)
        parts.append(f"- `{name}`: " + (f"![{name}]({name})" if why is None else f"skipped — {why}"))
    if paper_md:
        parts += ["", "## Paper headline numbers beside ours", "", paper_md]
    return "\n".join(parts) + "\n"
