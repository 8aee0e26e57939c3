"""Turn run directories (single runs or Hydra multirun sweeps) into tables and plots.

    python -m sparse_ft.report PATH [PATH ...] [--out DIR] [--compare paper] [--no-plots]

Reads only what the runner leaves behind (``config.yaml``, ``summary.json``; see "Run
directory" in DESIGN.md) and imports nothing of the training side, so it runs without torch
on any machine the run directories were copied to. Writes into ``--out`` (default: the first
PATH):

- ``results.csv``  one row per run dir found, failed and unfinished ones included;
- ``report.md``    mean ± sample std (n) over seeds per method × task × setting, only
                   completed runs averaged, plus a list of the runs that did not complete;
- ``score_vs_updated.png``, ``score_vs_energy.png``, ``score_vs_sparsity.png``,
  ``memory_per_method.png``  (only those with data; report.md says which were skipped).

``--compare paper`` adds the five papers' headline numbers beside ours (report_paper.py).
The Markdown tables are printed to stdout. Exit status 2 when no run directory is found.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

log = logging.getLogger(__name__)

COMPLETED = "completed"
UNFINISHED = "unfinished"  # a run dir without (a readable) summary.json

RUN_MARKERS = ("summary.json", "config.yaml")  # plus a `.hydra/` folder
SKIP_DIRS = {"checkpoints", "wandb", "__pycache__", "energy", "logs"}

# Config keys that never define a "setting" (they change per run or per seed by construction).
_NON_SETTING_LAST = re.compile(r"(^|_)(seed|dir|path|root|file|run_name|id)$", re.I)
_NON_SETTING_PREFIX = ("hydra.", "logger.", "task.", "paths.")

GLUE_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnlim", "mnlimm", "mnlimatched",
              "mnlimismatched", "qnli", "rte", "wnli", "ax"]
DENSE_NAMES = {"dense", "full", "fullft", "finetune", "fullfinetune", "fullfinetuning", "ft"}

# Which energy figure the table uses, best first.
ENERGY_SOURCES = ("kwh_counter", "kwh_power_integral", "kwh_util_estimate", "cpu_kwh")

# Summary blocks in the order results.csv lists them (anything else follows).
SUMMARY_ORDER = ("metrics", "best", "params", "data", "storage", "communication", "energy",
                 "memory", "time", "git_commit", "versions")
IDENTITY = ("task", "method", "model", "seed")

PLOTS = ("score_vs_updated.png", "score_vs_energy.png", "score_vs_sparsity.png",
         "memory_per_method.png")

MiB = float(1 << 20)


class NoRunsError(RuntimeError):
    """No run directory under the given paths."""


# ----------------------------------------------------------------------------- small helpers
def _norm(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def is_glue_task(task: Any) -> bool:
    t = _norm(task)
    if t.startswith("glue"):
        t = t[4:]
    return t in GLUE_ORDER or t.startswith("mnli")


def is_dense_method(method: Any) -> bool:
    return _norm(method) in DENSE_NAMES


def _natural_key(value: Any) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(value))]


def _num(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and missing values are not figures)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def _canon(value: Any) -> str:
    """A hashable, comparable spelling of a config value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value) if abs(value) < 1e15 else value
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _sort_value(value: Any) -> tuple:
    v = _num(value)
    return (0, v, "") if v is not None else (1, 0.0, str(value))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a.b.c": leaf}. Lists stay as leaves; an empty dict is dropped."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(flatten(value, name))
            else:
                out[name] = value
    elif prefix:
        out[prefix] = data
    return out


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None when n < 2, n) over the finite numbers in `values`."""
    xs = [v for v in (_num(x) for x in values) if v is not None]
    if not xs:
        return None, None, 0
    if len(xs) == 1:
        return xs[0], None, 1
    return statistics.fmean(xs), statistics.stdev(xs), len(xs)


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


# ----------------------------------------------------------------------------- run dirs
def is_run_dir(path: Path) -> bool:
    if (path / "multirun.yaml").is_file():
        return False  # a sweep dir: its numbered subdirs are the runs
    return any((path / m).is_file() for m in RUN_MARKERS) or (path / ".hydra").is_dir()


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run dirs at or below each path (a run dir's own subfolders are not searched)."""
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(p: Path) -> None:
        if p.resolve() in seen:
            return
        if is_run_dir(p):
            seen.add(p.resolve())
            found.append(p)
            return
        try:
            children = sorted((c for c in p.iterdir() if c.is_dir()), key=lambda c: _natural_key(c.name))
        except OSError as exc:
            log.warning("cannot list %s: %s", p, exc)
            return
        for child in children:
            if child.name.startswith(".") or child.name in SKIP_DIRS:
                continue
            walk(child)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walk(p)
        else:
            log.warning("not a directory: %s", p)
    return found


@dataclass
class Run:
    path: Path
    status: str
    config: dict = field(default_factory=dict)
    summary: dict | None = None
    error: str | None = None
    flat_config: dict = field(default_factory=dict)
    flat_summary: dict = field(default_factory=dict)
    has_config: bool = False

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED

    def _ident(self, key: str) -> Any:
        s = self.summary or {}
        if s.get(key) not in (None, ""):
            return s[key]
        c = self.config.get(key)
        if isinstance(c, dict):
            return c.get("name")
        return c

    @property
    def task(self) -> Any:
        return self._ident("task")

    @property
    def method(self) -> Any:
        return self._ident("method")

    @property
    def model(self) -> Any:
        return self._ident("model")

    @property
    def seed(self) -> Any:
        return self._ident("seed")

    # -- figures (None when absent)
    @property
    def main(self) -> float | None:
        return _num(self.flat_summary.get("metrics.main"))

    @property
    def test_main(self) -> float | None:
        return _num(self.flat_summary.get("metrics.test.main"))

    @property
    def updated_fraction(self) -> float | None:
        return _num(self.flat_summary.get("params.updated_fraction"))

    @property
    def trainable_fraction(self) -> float | None:
        t = _num(self.flat_summary.get("params.trainable"))
        n = _num(self.flat_summary.get("params.total"))
        return t / n if t is not None and n else None

    @property
    def sparsity(self) -> float | None:
        """Fraction of weights frozen/pruned: method.sparsity if the config has it, else 1 - updated."""
        s = _num(self.flat_config.get("method.sparsity"))
        if s is not None:
            return s / 100.0 if s > 1 else s
        u = self.updated_fraction
        return None if u is None else 1.0 - u

    @property
    def energy(self) -> tuple[float | None, str | None]:
        for src in ENERGY_SOURCES:
            v = _num(self.flat_summary.get(f"energy.{src}"))
            if v is not None:
                return v, src
        return None, None

    @property
    def peak_train_bytes(self) -> float | None:
        return _num(self.flat_summary.get("memory.peak_bytes.train"))

    @property
    def samples_per_s(self) -> float | None:
        return _num(self.flat_summary.get("time.train_samples_per_s"))

    @property
    def storage_ratio_min(self) -> float | None:
        ratios = [_num(v) for k, v in self.flat_summary.items()
                  if k.startswith("storage.") and k.endswith("ratio_to_dense_fp32")]
        ratios = [r for r in ratios if r is not None]
        return min(ratios) if ratios else None


def _read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _last_log_line(run_dir: Path) -> str | None:
    for name in ("run.log",):
        p = run_dir / name
        if p.is_file():
            try:
                lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
            except OSError:
                return None
            lines = [ln for ln in lines if ln]
            if lines:
                return lines[-1][-300:]
    for p in sorted(run_dir.glob("*.log")):
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        if lines:
            return lines[-1][-300:]
    return None


def load_run(path: Path) -> Run:
    path = Path(path)
    config = None
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if candidate.is_file():
            config = _read_yaml(candidate)
            if config is not None:
                break
    has_config = config is not None
    config = dict(config or {})
    config.pop("hydra", None)

    summary = None
    error = None
    sp = path / "summary.json"
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text(encoding="utf-8"))
            if not isinstance(summary, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            summary = None
            error = f"summary.json unreadable: {exc}"
    if summary is None:
        status = UNFINISHED
        if error is None:
            error = "no summary.json (the run never finished)"
        tail = _last_log_line(path)
        if tail:
            error += f"; last log line: {tail}"
    else:
        status = str(summary.get("status") or "unknown")
        err = summary.get("error")
        error = None if err in (None, "") else str(err)
        if status != COMPLETED and error is None:
            error = f"status {status!r}, no error recorded"

    flat_summary = {}
    if summary:
        flat_summary = {k: v for k, v in flatten(summary).items()
                        if k not in ("status", "error") and k not in IDENTITY}
    return Run(path=path, status=status, config=config, summary=summary, error=error,
               flat_config=flatten(config), flat_summary=flat_summary, has_config=has_config)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(p) for p in find_run_dirs(paths)]


def failed_runs(sweep_dir: str | Path) -> list[Path]:
    """Run dirs under `sweep_dir` whose status is not "completed" (unfinished ones included)."""
    return [r.path for r in load_runs([sweep_dir]) if not r.completed]


# ----------------------------------------------------------------------------- analysis
def varying_config_keys(runs: Sequence[Run]) -> list[str]:
    """Flattened config keys whose value differs between runs (missing counts as a value;
    runs without any config are ignored). Order: first appearance."""
    with_cfg = [r for r in runs if r.has_config]
    keys: dict[str, None] = {}
    for r in with_cfg:
        for k in r.flat_config:
            keys.setdefault(k, None)
    missing = object()
    out = []
    for k in keys:
        values = {(_canon(r.flat_config[k]) if k in r.flat_config else missing) for r in with_cfg}
        if len(values) > 1:
            out.append(k)
    return out


def setting_keys(runs: Sequence[Run], varying: Sequence[str]) -> tuple[list[str], list[str]]:
    """Varying keys that define a "setting" (rows of the table), and the varying keys left out
    because they follow the task (e.g. per-task epochs) rather than define a setting."""
    completed = [r for r in runs if r.completed] or list(runs)
    keys, task_bound = [], []
    for k in varying:
        if k == "seed" or k == "method.name" or k == "model.name_or_path":
            continue
        if k.startswith(_NON_SETTING_PREFIX) or _NON_SETTING_LAST.search(k.rsplit(".", 1)[-1]):
            continue
        per_task: dict[str, set] = {}
        for r in completed:
            per_task.setdefault(_canon(r.task), set()).add(_canon(r.flat_config.get(k)))
        if len(per_task) > 1 and all(len(v) == 1 for v in per_task.values()):
            task_bound.append(k)
            continue
        keys.append(k)
    return keys, task_bound


def setting_of(run: Run, keys: Sequence[str]) -> tuple:
    return tuple((k, _canon(run.flat_config[k])) for k in keys if k in run.flat_config)


_ALWAYS_LABEL = re.compile(r"(^|_)(density|sparsity)$")


def label_keys(runs: Sequence[Run], keys: Sequence[str]) -> dict[Any, list[str]]:
    """Per method, the setting keys its label shows: those that vary between that method's
    completed runs, plus density/sparsity knobs. (A fish-only constant such as
    method.num_samples=1024 still separates groups, it just isn't repeated in every label;
    results.csv has every value.)"""
    out: dict[Any, list[str]] = {}
    by_method: dict[Any, list[Run]] = {}
    for r in runs:
        if r.completed:
            by_method.setdefault(r.method, []).append(r)
    missing = object()
    for method, rs in by_method.items():
        shown = []
        for k in keys:
            vals = {(_canon(r.flat_config[k]) if k in r.flat_config else missing) for r in rs}
            if len(vals) > 1 or (_ALWAYS_LABEL.search(k.rsplit(".", 1)[-1]) and vals != {missing}):
                shown.append(k)
        out[method] = shown
    return out


def setting_label(setting: tuple, shown: Sequence[str] | None = None) -> str:
    def show(v: str) -> str:
        try:
            val = json.loads(v)
        except ValueError:
            return v
        return val if isinstance(val, str) else v

    items = [(k, v) for k, v in setting if shown is None or k in shown]
    if not items:
        return "—"
    return ", ".join(f"{k}={show(v)}" for k, v in items)


def _setting_sort(setting: tuple) -> tuple:
    out = []
    for k, v in setting:
        try:
            val = json.loads(v)
        except ValueError:
            val = v
        out.append((k, _sort_value(val)))
    return tuple(out)


def _method_sort(m: Any) -> tuple:
    return (0 if is_dense_method(m) else 1, _natural_key(m))


def _task_sort(t: Any) -> tuple:
    n = _norm(t)
    n = n[4:] if n.startswith("glue") else n
    return (0, GLUE_ORDER.index(n), "") if n in GLUE_ORDER else (1, 0, str(t))


@dataclass
class Group:
    method: Any
    task: Any
    setting: tuple
    runs: list[Run]


@dataclass
class Analysis:
    runs: list[Run]
    varying: list[str]
    settings: list[str]
    task_bound: list[str]
    groups: list[Group]  # completed runs only
    tasks: list[Any]
    glue_tasks: list[Any]
    score_scale: float
    energy_sources: dict[str, int]
    shown: dict[Any, list[str]] = field(default_factory=dict)

    def label(self, method: Any, setting: tuple) -> str:
        return setting_label(setting, self.shown.get(method))

    def run_label(self, run: Run) -> str:
        return self.label(run.method, setting_of(run, self.settings))

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.completed]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if not r.completed]

    def rows(self) -> list[tuple[Any, tuple]]:
        """(method, setting) pairs, in table order."""
        seen = {(g.method, g.setting) for g in self.groups}
        return sorted(seen, key=lambda ms: (_method_sort(ms[0]), _setting_sort(ms[1])))

    def group(self, method: Any, task: Any, setting: tuple) -> Group | None:
        for g in self.groups:
            if g.method == method and g.task == task and g.setting == setting:
                return g
        return None


def analyse(runs: Sequence[Run]) -> Analysis:
    runs = list(runs)
    varying = varying_config_keys(runs)
    settings, task_bound = setting_keys(runs, varying)
    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.completed:
            buckets.setdefault((r.method, r.task, setting_of(r, settings)), []).append(r)
    groups = [Group(m, t, s, rs) for (m, t, s), rs in buckets.items()]
    groups.sort(key=lambda g: (_method_sort(g.method), _task_sort(g.task), _setting_sort(g.setting)))
    tasks = sorted({g.task for g in groups}, key=_task_sort)
    glue = [t for t in tasks if is_glue_task(t)]
    scores = [v for r in runs if r.completed for v in (r.main, r.test_main) if v is not None]
    scale = 100.0 if scores and all(abs(v) <= 1.0 for v in scores) else 1.0
    sources: dict[str, int] = {}
    for r in runs:
        if r.completed:
            _, src = r.energy
            if src:
                sources[src] = sources.get(src, 0) + 1
    return Analysis(runs, varying, settings, task_bound, groups, tasks, glue, scale, sources,
                    label_keys(runs, settings))


def main_metric_name(runs: Sequence[Run]) -> str | None:
    """Name of the selection metric: from the config if it says, else the metric whose value
    equals `metrics.main` on the first split that has one."""
    for r in runs:
        for k in ("task.main_metric", "task.metric", "task.selection_metric", "task.metric_for_best"):
            if isinstance(r.flat_config.get(k), str):
                return r.flat_config[k]
    names: set[str] = set()
    for r in runs:
        m = r.main
        metrics = (r.summary or {}).get("metrics") or {}
        if m is None or not isinstance(metrics, dict):
            continue
        for split in ("validation", "dev", "val", "test"):
            block = metrics.get(split)
            if isinstance(block, dict):
                hits = [k for k, v in block.items() if k != "main" and _num(v) is not None and abs(_num(v) - m) < 1e-12]
                if len(hits) == 1:
                    names.add(hits[0])
                break
    return names.pop() if len(names) == 1 else None


# ----------------------------------------------------------------------------- results.csv
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
        if k in cols:
            continue
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


def result_rows(runs: Sequence[Run], columns: Sequence[str]) -> list[dict]:
    rows = []
    for r in runs:
        kwh, src = r.energy
        row: dict[str, Any] = {"run_dir": str(r.path), "status": r.status, "task": r.task,
                               "method": r.method, "model": r.model, "seed": r.seed,
                               "report.energy_kwh": kwh, "report.energy_source": src, "error": r.error}
        for c in columns:
            if c in row:
                continue
            if c.startswith("config."):
                row[c] = r.flat_config.get(c[len("config."):])
            elif c in r.flat_summary:
                row[c] = r.flat_summary[c]
            else:
                row[c] = r.flat_config.get(c)
        rows.append({c: _csv_value(row.get(c)) for c in columns})
    return rows


def write_results_csv(runs: Sequence[Run], varying: Sequence[str], path: Path) -> list[str]:
    columns = result_columns(runs, varying)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(result_rows(runs, columns))
    tmp.replace(path)
    return columns


# ----------------------------------------------------------------------------- Markdown
def _glue_avg(an: Analysis, method: Any, setting: tuple) -> tuple[float | None, list]:
    means = []
    have = []
    for t in an.glue_tasks:
        g = an.group(method, t, setting)
        if g is None:
            continue
        m, _, n = mean_std(r.main for r in g.runs)
        if n:
            means.append(m * an.score_scale)
            have.append(t)
    return (statistics.fmean(means) if means else None), have


def _energy_note(an: Analysis) -> str:
    if not an.energy_sources:
        return "no run reported an energy figure"
    parts = [f"`energy.{s}` ({n} run{'s' if n != 1 else ''})" for s, n in an.energy_sources.items()]
    return ("per run the first available of " + " > ".join(f"`{s}`" for s in ENERGY_SOURCES)
            + "; used: " + ", ".join(parts))


def main_table(an: Analysis) -> str:
    unit = " (×100)" if an.score_scale != 1 else ""
    mname = main_metric_name(an.completed)
    header = ["method", "setting"]
    header += [f"{t} main{unit}" for t in an.tasks]
    if an.glue_tasks:
        header.append(f"GLUE avg{unit}")
    header += ["updated %", "energy kWh", "peak mem MiB", "train samples/s"]
    rows = []
    partial = False
    for method, setting in an.rows():
        row = [method, an.label(method, setting)]
        runs_in_row: list[Run] = []
        for t in an.tasks:
            g = an.group(method, t, setting)
            if g is None:
                row.append("—")
                continue
            runs_in_row += g.runs
            row.append(fmt_cell((r.main for r in g.runs), an.score_scale, 2 if an.score_scale != 1 else None))
        if an.glue_tasks:
            avg, have = _glue_avg(an, method, setting)
            cell = fmt_num(avg, 2)
            if avg is not None and len(have) < len(an.glue_tasks):
                cell += f" † ({len(have)}/{len(an.glue_tasks)})"
                partial = True
            row.append(cell)
        row.append(fmt_cell((r.updated_fraction for r in runs_in_row), 100.0))
        row.append(fmt_cell(r.energy[0] for r in runs_in_row))
        row.append(fmt_cell((r.peak_train_bytes / MiB if r.peak_train_bytes is not None else None)
                            for r in runs_in_row))
        row.append(fmt_cell(r.samples_per_s for r in runs_in_row))
        rows.append(row)
    align = "ll" + "r" * (len(header) - 2)
    notes = [
        f"Cells: mean ± sample std (n runs, one per seed) over completed runs; ± — when n = 1. "
        f"Main metric = `metrics.main`{f' ({mname})' if mname else ''}, the task's selection metric on "
        f"its selection split{', shown ×100' if an.score_scale != 1 else ''}.",
    ]
    if an.glue_tasks:
        notes.append("GLUE avg = unweighted mean of the per-task main-metric means over: "
                     + ", ".join(str(t) for t in an.glue_tasks)
                     + (". † = this row lacks some of those tasks; averaged over the ones it has." if partial else "."))
    notes.append("updated % = 100 × `params.updated_fraction`; efficiency columns pool every task of the row.")
    notes.append("energy kWh: " + _energy_note(an) + ".")
    notes.append("peak mem MiB = `memory.peak_bytes.train` / 2^20; train samples/s = `time.train_samples_per_s`.")
    if an.settings:
        notes.append("setting = the config keys that vary across runs (seed, task.* and method.name aside): "
                     + ", ".join(f"`{k}`" for k in an.settings)
                     + "; a row's label shows those that vary within its method, plus density/sparsity.")
    if an.task_bound:
        notes.append("varying with the task only (not a setting): " + ", ".join(f"`{k}`" for k in an.task_bound) + ".")
    return md_table(header, rows, align) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def detail_table(an: Analysis) -> str:
    unit = " (×100)" if an.score_scale != 1 else ""
    dec = 2 if an.score_scale != 1 else None
    has_test = any(r.test_main is not None for r in an.completed)
    header = ["method", "task", "setting", f"main{unit}"]
    if has_test:
        header.append(f"test main{unit}")
    header += ["updated %", "energy kWh", "peak mem MiB", "train samples/s", "wall s"]
    rows = []
    for g in an.groups:
        row = [g.method, g.task, an.label(g.method, g.setting),
               fmt_cell((r.main for r in g.runs), an.score_scale, dec)]
        if has_test:
            row.append(fmt_cell((r.test_main for r in g.runs), an.score_scale, dec))
        row += [fmt_cell((r.updated_fraction for r in g.runs), 100.0),
                fmt_cell(r.energy[0] for r in g.runs),
                fmt_cell((r.peak_train_bytes / MiB if r.peak_train_bytes is not None else None) for r in g.runs),
                fmt_cell(r.samples_per_s for r in g.runs),
                fmt_cell(_num(r.flat_summary.get("time.wall_s.total")) for r in g.runs)]
        rows.append(row)
    return md_table(header, rows, "lll" + "r" * (len(header) - 3))


def problems_section(an: Analysis) -> str:
    probs = an.problems
    if not probs:
        return "All runs completed."
    rows = [[str(r.path), r.status, r.method or "—", r.task or "—", r.seed if r.seed is not None else "—",
             (r.error or "—").strip().splitlines()[-1][:300] if r.error else "—"]
            for r in probs]
    return (f"{len(probs)} run(s) did not complete; they are listed here and never averaged into the tables.\n\n"
            + md_table(["run dir", "status", "method", "task", "seed", "error"], rows))


# ----------------------------------------------------------------------------- plots
def _method_styles(methods: Sequence[Any]) -> dict[Any, tuple[str, str]]:
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
               "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    markers = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
    return {m: (colours[i % len(colours)], markers[i % len(markers)]) for i, m in enumerate(methods)}


def _scatter_plot(an: Analysis, path: Path, xfn, xlabel: str, logx: bool, title: str) -> str | None:
    """One panel per task; a point per (method, setting) with error bars over seeds.
    Returns None when written, or the reason it was skipped."""
    from matplotlib.figure import Figure  # lazy: the module imports without matplotlib

    panels: dict[Any, list] = {}
    for g in an.groups:
        xs = [xfn(r) for r in g.runs]
        pairs = [(x, r.main) for x, r in zip(xs, g.runs) if x is not None and r.main is not None
                 and (not logx or x > 0)]
        if not pairs:
            continue
        xm, xs_, _ = mean_std(p[0] for p in pairs)
        ym, ys_, n = mean_std(p[1] * an.score_scale for p in pairs)
        panels.setdefault(g.task, []).append((g.method, g.setting, xm, xs_ or 0.0, ym, ys_ or 0.0, n))
    if not panels:
        return "no completed run has both a main score and this x figure"
    methods = sorted({p[0] for pts in panels.values() for p in pts}, key=_method_sort)
    styles = _method_styles(methods)
    tasks = sorted(panels, key=_task_sort)
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        labelled = set()
        for method, setting, xm, xsd, ym, ysd, n in panels[task]:
            colour, marker = styles[method]
            ax.errorbar(xm, ym, xerr=xsd or None, yerr=ysd or None, fmt=marker, color=colour,
                        capsize=3, markersize=6, label=None if method in labelled else str(method))
            labelled.add(method)
        if logx:
            ax.set_xscale("log")
        ax.set_title(str(task))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("main score" + (" (×100)" if an.score_scale != 1 else ""))
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return None


def _memory_plot(an: Analysis, path: Path) -> str | None:
    from matplotlib.figure import Figure

    bars = []  # (label, task, mean MiB, std)
    for g in an.groups:
        m, s, n = mean_std(r.peak_train_bytes / MiB for r in g.runs if r.peak_train_bytes is not None)
        if n:
            lab = an.label(g.method, g.setting)
            label = str(g.method) + ("" if lab == "—" else "\n" + lab)
            bars.append((label, g.task, m, s or 0.0))
    if not bars:
        return "no completed run reported `memory.peak_bytes.train`"
    labels = list(dict.fromkeys(b[0] for b in bars))
    tasks = sorted({b[1] for b in bars}, key=_task_sort)
    width = 0.8 / len(tasks)
    fig = Figure(figsize=(max(5.0, 1.3 * len(labels) * max(1, len(tasks)) ** 0.5 + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    for j, task in enumerate(tasks):
        xs, hs, es = [], [], []
        for i, lab in enumerate(labels):
            for b in bars:
                if b[0] == lab and b[1] == task:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    hs.append(b[2])
                    es.append(b[3])
        ax.bar(xs, hs, width=width, yerr=es, capsize=3, label=str(task))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize="small")
    ax.set_ylabel("peak train memory (MiB)")
    ax.set_title("Peak training memory per method (mean ± std over seeds)")
    ax.grid(True, axis="y", alpha=0.3)
    if len(tasks) > 1:
        ax.legend(fontsize="small", title="task")
    fig.savefig(path, dpi=110)
    return None


def write_plots(an: Analysis, out: Path) -> dict[str, str | None]:
    """name → None (written) or the reason it was skipped."""
    results: dict[str, str | None] = {}
    if not an.groups:
        return {name: "no completed runs" for name in PLOTS}
    specs = {
        "score_vs_updated.png": (lambda r: None if r.updated_fraction is None else 100.0 * r.updated_fraction,
                                 "updated parameters (%) [log]", True, "Score vs updated-parameter %"),
        "score_vs_energy.png": (lambda r: r.energy[0], "energy (kWh) [log]", True, "Score vs energy"),
        "score_vs_sparsity.png": (lambda r: None if r.sparsity is None else 100.0 * r.sparsity,
                                  "sparsity (%): method.sparsity, else 1 − updated fraction", False,
                                  "Score vs sparsity"),
    }
    for name, (xfn, xlabel, logx, title) in specs.items():
        try:
            results[name] = _scatter_plot(an, out / name, xfn, xlabel, logx, title)
        except Exception as exc:  # a plot must never cost the tables
            log.exception("plot %s failed", name)
            results[name] = f"plotting failed: {exc}"
    if results["score_vs_energy.png"] and not an.energy_sources:
        results["score_vs_energy.png"] = "no completed run reported an energy figure (" + ", ".join(ENERGY_SOURCES) + ")"
    try:
        results["memory_per_method.png"] = _memory_plot(an, out / "memory_per_method.png")
    except Exception as exc:
        log.exception("plot memory_per_method.png failed")
        results["memory_per_method.png"] = f"plotting failed: {exc}"
    for name, why in results.items():
        if why:
            log.info("skipped %s: %s", name, why)
            stale = out / name
            if stale.is_file():  # don't leave an old plot that no longer matches the tables
                stale.unlink()
    return results


# ----------------------------------------------------------------------------- the report
@dataclass
class ReportResult:
    out_dir: Path
    runs: list[Run]
    files: list[Path]
    table_md: str
    markdown: str
    plots: dict[str, str | None]
    paper_md: str | None = None

    @property
    def failed(self) -> list[Path]:
        return [r.path for r in self.runs if not r.completed]


def generate_report(paths: Sequence[str | Path], out: str | Path | None = None,
                    compare: str | None = None, plots: bool = True) -> ReportResult:
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    if not runs:
        raise NoRunsError("no run directories (a folder with summary.json, config.yaml or .hydra/) found under: "
                          + ", ".join(str(p) for p in paths))
    out_dir = Path(out) if out is not None else (paths[0] if paths[0].is_dir() else paths[0].parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    an = analyse(runs)

    files = []
    csv_path = out_dir / "results.csv"
    write_results_csv(runs, an.varying, csv_path)
    files.append(csv_path)

    plot_status = write_plots(an, out_dir) if plots else {n: "plots disabled (--no-plots)" for n in PLOTS}
    files += [out_dir / n for n, why in plot_status.items() if why is None]

    n_ok = len(an.completed)
    table = main_table(an) if an.groups else "_No completed runs: nothing to average._"
    parts = [
        "# sparse-ft report",
        "",
        f"{len(runs)} run dir(s) under {', '.join(f'`{p}`' for p in paths)}: {n_ok} completed, "
        f"{len(runs) - n_ok} not completed. Full per-run figures: `results.csv`.",
        "",
        "## Results by method × setting (columns: tasks)",
        "",
        table,
    ]
    if an.groups:
        parts += ["", "## Per method × task × setting", "", detail_table(an)]
    parts += ["", "## Failed, interrupted and unfinished runs", "", problems_section(an), "", "## Plots", ""]
    for name in PLOTS:
        why = plot_status.get(name)
        parts.append(f"- `{name}`: " + (f"![{name}]({name})" if why is None else f"skipped — {why}"))

    paper_md = None
    if compare:
        if compare != "paper":
            raise ValueError(f"--compare: unknown value {compare!r} (only 'paper')")
        from sparse_ft.report_paper import comparison_markdown, records_from_runs

        paper_md = comparison_markdown(records_from_runs(an.completed, an.run_label), an.score_scale)
        parts += ["", "## Paper headline numbers beside ours", "", paper_md]

    markdown = "\n".join(parts) + "\n"
    md_path = out_dir / "report.md"
    tmp = md_path.with_name("report.md.tmp")
    tmp.write_text(markdown, encoding="utf-8")
    tmp.replace(md_path)
    files.insert(1, md_path)
    return ReportResult(out_dir, runs, files, table, markdown, plot_status, paper_md)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparse_ft.report",
        description="Tables and plots from sparse-ft run directories (single runs or multirun sweeps).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run dirs or sweep dirs (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="where to write results.csv, report.md, *.png (default: the first PATH)")
    p.add_argument("--compare", choices=["paper"], help="add the papers' headline numbers beside ours")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = generate_report(args.paths, out=args.out, compare=args.compare, plots=not args.no_plots)
    except NoRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table_md)
    if result.failed:
        print(f"\n{len(result.failed)} run(s) did not complete (see report.md):", file=sys.stdout)
        for r in result.runs:
            if not r.completed:
                print(f"  {r.path}  [{r.status}] {(r.error or '').splitlines()[-1][:200] if r.error else ''}")
    if result.paper_md:
        print("\n## Paper headline numbers beside ours\n")
        print(result.paper_md)
    log.info("wrote %s", ", ".join(str(f) for f in result.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
