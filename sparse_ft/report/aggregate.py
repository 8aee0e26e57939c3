"""From runs to groups: settings, seeds pooled into mean ± std, and the papers' selection.

A *setting* is the tuple of config values that vary across the runs (seed, task.* and a few
per-run keys aside). Its keys split in two:

- *tuned* keys (``trainer.*`` and top-level sweep helpers such as ``lr_choice``) are the
  hyper-parameters the papers search; the selection picks one value per task and method.
- *variant* keys (``method.*``, ``model.*``, ``distributed.*``, …) define what is being
  compared (e.g. FISH at 0.5% vs 2% density), so each variant keeps its own row.

Only training runs (``job=train``) are grouped, selected and averaged. ``job=evaluate`` and
``job=compress`` runs re-score or compress a source run: they are kept apart (``Analysis.derived``,
reported beside their source's score), and ``job``/``source`` are never a setting.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .collect import Run, as_number, natural_key, training_runs

# Config keys that never define a "setting" (they change per run or per seed by construction).
_NON_SETTING_LAST = re.compile(r"(^|_)(seed|dir|path|root|file|run_name|id)$", re.I)
_NON_SETTING_PREFIX = ("hydra.", "logger.", "task.", "paths.")
_NON_SETTING_KEYS = {"seed", "method.name", "model.name_or_path", "job", "source"}  # job/source: what kind of run, not a knob
_ALWAYS_LABEL = re.compile(r"(^|_)(density|sparsity)$")

GLUE_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnlim", "mnlimm", "mnlimatched",
              "mnlimismatched", "qnli", "rte", "wnli", "ax"]
DENSE_NAMES = {"dense", "full", "fullft", "finetune", "fullfinetune", "fullfinetuning", "ft"}


# ----------------------------------------------------------------------------- small helpers
def norm_name(name: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def is_glue_task(task: Any) -> bool:
    t = norm_name(task)
    t = t[4:] if t.startswith("glue") else t
    return t in GLUE_ORDER or t.startswith("mnli")


def is_dense_method(method: Any) -> bool:
    return norm_name(method) in DENSE_NAMES


def canon(value: Any) -> str:
    """A hashable, comparable spelling of a config value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value) if abs(value) < 1e15 else value
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None when n < 2, n) over the finite numbers in `values`."""
    xs = [v for v in (as_number(x) for x in values) if v is not None]
    if not xs:
        return None, None, 0
    if len(xs) == 1:
        return xs[0], None, 1
    return statistics.fmean(xs), statistics.stdev(xs), len(xs)


def method_sort(m: Any) -> tuple:
    return (0 if is_dense_method(m) else 1, natural_key(m))


def task_sort(t: Any) -> tuple:
    n = norm_name(t)
    n = n[4:] if n.startswith("glue") else n
    return (0, GLUE_ORDER.index(n), "") if n in GLUE_ORDER else (1, 0, str(t))


def setting_sort(setting: tuple) -> tuple:
    def value_key(v: Any) -> tuple:
        x = as_number(v)
        return (0, x, "") if x is not None else (1, 0.0, str(v))

    return tuple((k, value_key(_decode(v))) for k, v in setting)


def is_tuned_key(key: str) -> bool:
    """Hyper-parameters the papers search per task (training knobs and top-level sweep helpers)."""
    return key.startswith("trainer.") or ("." not in key and key not in ("name", "experiment", "job", "source"))


# ----------------------------------------------------------------------------- settings
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
        values = {(canon(r.flat_config[k]) if k in r.flat_config else missing) for r in with_cfg}
        if len(values) > 1:
            out.append(k)
    return out


def _follows_task(runs: Sequence[Run], key: str) -> bool:
    per_task: dict[str, set] = {}
    for r in runs:
        per_task.setdefault(canon(r.task), set()).add(canon(r.flat_config.get(key)))
    return len(per_task) > 1 and all(len(v) == 1 for v in per_task.values())


def setting_keys(runs: Sequence[Run], varying: Sequence[str]) -> tuple[list[str], list[str]]:
    """Varying keys that define a "setting", and the varying keys left out because they follow
    the task (e.g. per-task epochs) rather than define a setting."""
    completed = [r for r in runs if r.completed] or list(runs)
    keys, task_bound = [], []
    for k in varying:
        if k in _NON_SETTING_KEYS or k.startswith(_NON_SETTING_PREFIX):
            continue
        if _NON_SETTING_LAST.search(k.rsplit(".", 1)[-1]):
            continue
        (task_bound if _follows_task(completed, k) else keys).append(k)
    return keys, task_bound


def setting_of(run: Run, keys: Sequence[str]) -> tuple:
    return tuple((k, canon(run.flat_config[k])) for k in keys if k in run.flat_config)


def split_setting(setting: tuple) -> tuple[tuple, tuple]:
    """(variant part, tuned part) of a setting."""
    return (tuple(kv for kv in setting if not is_tuned_key(kv[0])),
            tuple(kv for kv in setting if is_tuned_key(kv[0])))


def label_keys(runs: Sequence[Run], keys: Sequence[str]) -> dict[Any, list[str]]:
    """Per method, the setting keys its label shows: those that vary between that method's
    completed runs, plus density/sparsity knobs. (A fish-only constant such as
    method.num_samples=1024 still separates groups, it just isn't repeated in every label;
    results.csv has every value.)"""
    by_method: dict[Any, list[Run]] = {}
    for r in runs:
        if r.completed:
            by_method.setdefault(r.method, []).append(r)
    missing = object()
    out: dict[Any, list[str]] = {}
    for method, rs in by_method.items():
        shown = []
        for k in keys:
            vals = {(canon(r.flat_config[k]) if k in r.flat_config else missing) for r in rs}
            if len(vals) > 1 or (_ALWAYS_LABEL.search(k.rsplit(".", 1)[-1]) and vals != {missing}):
                shown.append(k)
        out[method] = shown
    return out


def setting_label(setting: tuple, shown: Sequence[str] | None = None) -> str:
    def show(v: str) -> str:
        val = _decode(v)
        return val if isinstance(val, str) else v

    items = [(k, v) for k, v in setting if shown is None or k in shown]
    return ", ".join(f"{k}={show(v)}" for k, v in items) if items else "—"


# ----------------------------------------------------------------------------- groups
@dataclass
class Group:
    """The completed runs of one method × task × setting (one run per seed)."""
    method: Any
    task: Any
    setting: tuple
    runs: list[Run]

    @property
    def variant(self) -> tuple:
        return split_setting(self.setting)[0]

    @property
    def tuned(self) -> tuple:
        return split_setting(self.setting)[1]

    def mean(self, attr: str) -> float | None:
        return mean_std(getattr(r, attr) for r in self.runs)[0]


@dataclass
class Selected:
    """The papers' choice for one method × variant × task: the group with the best mean
    validation score, and how many tuned settings it was chosen from."""
    group: Group
    candidates: int


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
    selected: dict[tuple, Selected] = field(default_factory=dict)  # (method, variant, task) → choice
    derived: list[Run] = field(default_factory=list)  # evaluate/compress runs: never grouped with training runs

    def label(self, method: Any, setting: tuple) -> str:
        return setting_label(setting, self.shown.get(method))

    def run_label(self, run: Run) -> str:
        return self.label(run.method, setting_of(run, self.settings))

    def variant_label(self, run: Run) -> str:
        return self.label(run.method, split_setting(setting_of(run, self.settings))[0])

    @property
    def completed(self) -> list[Run]:
        """Completed training runs: what the tables, plots and comparisons average."""
        return [r for r in self.runs if r.completed and r.is_training]

    @property
    def completed_any(self) -> list[Run]:
        """Every completed run, evaluate and compress jobs included."""
        return [r for r in self.runs if r.completed]

    @property
    def problems(self) -> list[Run]:
        return [r for r in self.runs if not r.completed]

    @property
    def tuned_keys(self) -> list[str]:
        return [k for k in self.settings if is_tuned_key(k)]

    @property
    def variant_keys(self) -> list[str]:
        return [k for k in self.settings if not is_tuned_key(k)]

    def rows(self) -> list[tuple[Any, tuple]]:
        """(method, setting) pairs, in table order."""
        seen = {(g.method, g.setting) for g in self.groups}
        return sorted(seen, key=lambda ms: (method_sort(ms[0]), setting_sort(ms[1])))

    def variant_rows(self) -> list[tuple[Any, tuple]]:
        """(method, variant) pairs of the selected table, in table order."""
        seen = {(m, v) for (m, v, _) in self.selected}
        return sorted(seen, key=lambda mv: (method_sort(mv[0]), setting_sort(mv[1])))

    def group(self, method: Any, task: Any, setting: tuple) -> Group | None:
        for g in self.groups:
            if g.method == method and g.task == task and g.setting == setting:
                return g
        return None

    def choice(self, method: Any, variant: tuple, task: Any) -> Selected | None:
        return self.selected.get((method, variant, task))

    def selected_runs(self) -> set[int]:
        """ids of the runs in a selected group (what --compare paper averages)."""
        return {id(r) for s in self.selected.values() for r in s.group.runs}


def select_best(groups: Sequence[Group]) -> dict[tuple, Selected]:
    """Per method × variant × task, the tuned setting with the highest mean validation main
    score over its seeds. Ties: more seeds, then the first setting in table order. Test
    scores play no part (selecting on test would leak the held-out set into the result)."""
    buckets: dict[tuple, list[Group]] = {}
    for g in groups:
        buckets.setdefault((g.method, g.variant, g.task), []).append(g)
    out = {}
    for key, candidates in buckets.items():
        scored = [(g.mean("main"), len(g.runs), g) for g in candidates]
        scored = [s for s in scored if s[0] is not None]
        if not scored:
            continue
        best = min(scored, key=lambda s: (-s[0], -s[1], setting_sort(s[2].setting)))
        out[key] = Selected(best[2], len(candidates))
    return out


def glue_average(means: dict[Any, float | None], glue_tasks: Sequence[Any]) -> tuple[float | None, list]:
    """Unweighted mean of per-task means over the GLUE tasks that have one, and those tasks."""
    have = [t for t in glue_tasks if means.get(t) is not None]
    return (statistics.fmean(means[t] for t in have) if have else None), have


def _score_scale(runs: Sequence[Run]) -> float:
    """×100 when every score is a fraction (GLUE metrics), so tables read like the papers'."""
    scores = [v for r in runs for v in (r.main, r.test_main) if v is not None]
    return 100.0 if scores and all(abs(v) <= 1.0 for v in scores) else 1.0


def _energy_sources(runs: Sequence[Run]) -> dict[str, int]:
    sources: dict[str, int] = {}
    for r in runs:
        src = r.energy[1]
        if src:
            sources[src] = sources.get(src, 0) + 1
    return sources


def analyse(runs: Sequence[Run]) -> Analysis:
    runs = list(runs)
    training = training_runs(runs)
    derived = [r for r in runs if not r.is_training]
    completed = [r for r in training if r.completed]
    varying = varying_config_keys(runs)  # results.csv: every run's varying keys
    settings, task_bound = setting_keys(training, varying_config_keys(training))
    buckets: dict[tuple, list[Run]] = {}
    for r in completed:
        buckets.setdefault((r.method, r.task, setting_of(r, settings)), []).append(r)
    groups = [Group(m, t, s, rs) for (m, t, s), rs in buckets.items()]
    groups.sort(key=lambda g: (method_sort(g.method), task_sort(g.task), setting_sort(g.setting)))
    tasks = sorted({g.task for g in groups}, key=task_sort)
    scale = _score_scale([r for r in runs if r.completed])
    return Analysis(runs, varying, settings, task_bound, groups, tasks,
                    [t for t in tasks if is_glue_task(t)], scale,
                    _energy_sources(completed), label_keys(training, settings), select_best(groups), derived=derived)


def main_metric_name(runs: Sequence[Run]) -> str | None:
    """Name of the selection metric: from the config if it says, else the metric whose value
    equals `metrics.main` on the first split that has one."""
    for r in runs:
        for k in ("task.main_metric", "task.metric", "task.selection_metric", "task.metric_for_best"):
            if isinstance(r.flat_config.get(k), str):
                return r.flat_config[k]
    names: set[str] = set()
    for r in runs:
        hit = _metric_matching_main(r)
        if hit:
            names.add(hit)
    return names.pop() if len(names) == 1 else None


def _metric_matching_main(run: Run) -> str | None:
    m, metrics = run.main, run.block("metrics")
    if m is None:
        return None
    for split in ("validation", "dev", "val", "test"):
        block = metrics.get(split)
        if isinstance(block, dict):
            hits = [k for k, v in block.items()
                    if k != "main" and as_number(v) is not None and abs(as_number(v) - m) < 1e-12]
            return hits[0] if len(hits) == 1 else None
    return None
