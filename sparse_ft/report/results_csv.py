"""results.csv: one row per run dir (failed and unfinished ones included), every config key
that varies and every summary figure, flattened."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..core.io import atomic_write_text
from .collect import IDENTITY, Run

# Summary blocks in the order results.csv lists them (anything else follows).
SUMMARY_ORDER = ("metrics", "best", "params", "sparsity", "data", "storage", "communication", "energy",
                 "memory", "time", "git_commit", "versions")


def result_columns(runs: Sequence[Run], varying: Sequence[str]) -> list[str]:
    summary_keys: dict[str, None] = {}
    for r in runs:
        for k in r.flat_summary:
            summary_keys.setdefault(k, None)

    def block_rank(k: str) -> int:
        head = k.split(".", 1)[0]
        return SUMMARY_ORDER.index(head) if head in SUMMARY_ORDER else len(SUMMARY_ORDER)

    ordered_summary = sorted(summary_keys, key=block_rank)  # stable: first appearance inside a block
    cols = ["run_dir", "status", *IDENTITY]
    for k in varying:
        if k not in cols:
            # a config key spelled like a summary key gets a prefix so neither hides the other
            cols.append(f"config.{k}" if k in summary_keys else k)
    cols += [k for k in ordered_summary if k not in cols]
    cols += ["report.energy_kwh", "report.energy_source", "error"]
    return cols


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v)
    return v


def _value(run: Run, column: str) -> Any:
    if column.startswith("config."):
        return run.flat_config.get(column[len("config."):])
    if column in run.flat_summary:
        return run.flat_summary[column]
    return run.flat_config.get(column)


def result_rows(runs: Sequence[Run], columns: Sequence[str]) -> list[dict]:
    rows = []
    for r in runs:
        kwh, src = r.energy
        fixed: dict[str, Any] = {"run_dir": str(r.path), "status": r.status, "task": r.task,
                                 "method": r.method, "model": r.model, "seed": r.seed,
                                 "report.energy_kwh": kwh, "report.energy_source": src, "error": r.error}
        rows.append({c: _csv_value(fixed[c] if c in fixed else _value(r, c)) for c in columns})
    return rows


def write_results_csv(runs: Sequence[Run], varying: Sequence[str], path: Path) -> list[str]:
    columns = result_columns(runs, varying)
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=columns)
    w.writeheader()
    w.writerows(result_rows(runs, columns))
    atomic_write_text(path, text.getvalue())  # a reader never sees half a file
    return columns
