"""Find run directories and load each one into a `Run` (config.yaml + summary.json).

Reads only the run-directory contract of DESIGN.md ("Run directory"); imports nothing of the
training side, so it works on any machine the run directories were copied to.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..core import nested

log = logging.getLogger(__name__)

COMPLETED = "completed"
UNFINISHED = "unfinished"  # a run dir without (a readable) summary.json

RUN_MARKERS = ("summary.json", "config.yaml")  # plus a `.hydra/` folder
SKIP_DIRS = {"checkpoints", "wandb", "__pycache__", "energy", "logs"}
IDENTITY = ("task", "method", "model", "seed")
TRAIN_JOB = "train"  # `job=evaluate|compress` runs re-score or compress a source run: never training results

# Which energy figure the report uses, best first.
ENERGY_SOURCES = ("kwh_counter", "kwh_power_integral", "kwh_util_estimate", "cpu_kwh")


class NoRunsError(RuntimeError):
    """No run directory under the given paths."""


def as_number(value: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and missing values are not figures)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def natural_key(value: Any) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(value))]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → {"a.b.c": leaf}. Lists stay as leaves; an empty dict is dropped."""
    return nested.flatten(data, prefix, keep_empty=False)


# ----------------------------------------------------------------------------- run dirs
def is_run_dir(path: Path) -> bool:
    if (path / "multirun.yaml").is_file():
        return False  # a sweep dir: its numbered subdirs are the runs
    return any((path / m).is_file() for m in RUN_MARKERS) or (path / ".hydra").is_dir()


def _subdirs(path: Path) -> list[Path]:
    try:
        children = [c for c in path.iterdir() if c.is_dir()]
    except OSError as exc:
        log.warning("cannot list %s: %s", path, exc)
        return []
    children = [c for c in children if not c.name.startswith(".") and c.name not in SKIP_DIRS]
    return sorted(children, key=lambda c: natural_key(c.name))


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
        for child in _subdirs(p):
            walk(child)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walk(p)
        else:
            log.warning("not a directory: %s", p)
    return found


# ----------------------------------------------------------------------------- one run
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

    # -- generic access, so any table can read any summary block without a property per figure
    def block(self, name: str) -> dict:
        """The summary block `name` (e.g. "energy", "communication"), {} when absent or null."""
        value = (self.summary or {}).get(name)
        return value if isinstance(value, dict) else {}

    def figure(self, key: str) -> float | None:
        """A numeric summary figure by dotted key, e.g. "time.wall_s.total"; None when absent."""
        return as_number(self.flat_summary.get(key))

    def _ident(self, key: str) -> Any:
        s = self.summary or {}
        if s.get(key) not in (None, ""):
            return s[key]
        c = self.config.get(key)
        return c.get("name") if isinstance(c, dict) else c

    @property
    def job(self) -> str:
        """train | evaluate | compress (summary.json's `job`, else config.yaml's; train when neither says)."""
        job = (self.summary or {}).get("job") or self.config.get("job")
        return str(job) if job not in (None, "") else TRAIN_JOB

    @property
    def is_training(self) -> bool:
        return self.job == TRAIN_JOB

    @property
    def source_path(self) -> str | None:
        """An evaluate/compress run's source (`summary.source.path`, else config.yaml's `source`)."""
        src = (self.summary or {}).get("source")
        path = src.get("path") if isinstance(src, dict) else None
        path = path or self.config.get("source")
        return None if path in (None, "") else str(path)

    @property
    def shared_process(self) -> bool:
        """Did this job share its process with other jobs (so its peak memory includes theirs)?
        `measurement.process` ("own" | "shared") or `measurement.concurrent_jobs` where the run
        recorded them; otherwise a job of a multirun sweep of more than one job whose launcher
        runs the jobs in the sweep's own process (Hydra's basic launcher, the default)."""
        m = self.block("measurement")
        if m.get("process") in ("own", "shared"):
            return m["process"] == "shared"
        jobs = as_number(m.get("concurrent_jobs"))
        if jobs is not None:
            return jobs > 1
        return _sweep_shares_a_process(Path(self.path).parent)

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
        """The task's selection metric on its validation split (`metrics.main`)."""
        return self.figure("metrics.main")

    @property
    def test_main(self) -> float | None:
        """The selection metric on a labelled `test` split, where the run evaluated one."""
        return self.figure("metrics.test.main")

    @property
    def updated_fraction(self) -> float | None:
        """Entries that differ from the pretrained weights / all entries (not a sparsity)."""
        return self.figure("params.updated_fraction")

    @property
    def trainable_fraction(self) -> float | None:
        """Entries the optimizer may change / all entries (not a sparsity)."""
        frac = self.figure("params.trainable_fraction")
        if frac is not None:
            return frac
        t, n = self.figure("params.trainable"), self.figure("params.total")
        return t / n if t is not None and n else None

    @property
    def added(self) -> float | None:
        """Parameters that did not exist in the pretrained model (adapters, LoRA, side nets)."""
        return self.figure("params.added")

    @property
    def sparsity(self) -> float | None:
        """Measured fraction of zero weights (`sparsity.overall`, written by pruning methods).
        Never derived from updated/trainable fractions or from a config knob."""
        return self.figure("sparsity.overall")

    @property
    def energy(self) -> tuple[float | None, str | None]:
        for src in ENERGY_SOURCES:
            v = self.figure(f"energy.{src}")
            if v is not None:
                return v, src
        return None, None

    @property
    def peak_train_bytes(self) -> float | None:
        return self.figure("memory.peak_bytes.train")

    @property
    def peak_train_bytes_above_start(self) -> float | None:
        """CPU: peak training RSS minus the RSS at job start (the runtime's own share left out)."""
        return self.figure("memory.peak_bytes_above_start.train")

    @property
    def samples_per_s(self) -> float | None:
        return self.figure("time.train_samples_per_s")

    @property
    def wall_s(self) -> float | None:
        return self.figure("time.wall_s.total")

    @property
    def storage_ratio_min(self) -> float | None:
        ratios = [as_number(v) for k, v in self.flat_summary.items()
                  if k.startswith("storage.") and k.endswith("ratio_to_dense_fp32")]
        ratios = [r for r in ratios if r is not None]
        return min(ratios) if ratios else None


_LAUNCHERS: dict[tuple, str] = {}  # (multirun.yaml, its mtime) → the launcher's _target_
_JOBS: dict[tuple, int] = {}  # (sweep folder, its mtime) → how many run folders it holds
OWN_PROCESS_LAUNCHERS = ("submitit",)  # launchers that start one process per job


def _launcher_of(sweep: Path) -> str | None:
    """The `hydra.launcher._target_` of a sweep directory's multirun.yaml ("" when it names none);
    None when the folder is not a sweep."""
    f = sweep / "multirun.yaml"
    try:
        key = (str(f.resolve()), f.stat().st_mtime_ns)
    except OSError:
        return None
    if key not in _LAUNCHERS:
        hydra = (_read_yaml(f) or {}).get("hydra")
        launcher = hydra.get("launcher") if isinstance(hydra, dict) else None
        _LAUNCHERS[key] = str(launcher.get("_target_") or "") if isinstance(launcher, dict) else ""
    return _LAUNCHERS[key]


def _sweep_shares_a_process(sweep: Path) -> bool:
    """A multirun sweep directory (multirun.yaml) with more than one job, launched by a launcher
    that runs its jobs inside one process (the basic launcher; an unnamed one is taken to be it)."""
    target = _launcher_of(sweep)
    if target is None or any(t in target.lower() for t in OWN_PROCESS_LAUNCHERS):
        return False
    try:
        key = (str(sweep.resolve()), sweep.stat().st_mtime_ns)  # a new job folder changes the folder's mtime
    except OSError:
        return False
    if key not in _JOBS:
        _JOBS[key] = sum(1 for c in _subdirs(sweep) if is_run_dir(c))
    return _JOBS[key] > 1


def _read_yaml(path: Path) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _last_line(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][-300:] if lines else None


def _last_log_line(run_dir: Path) -> str | None:
    """The last line of run.log, else of any *.log: often the only trace of a killed run."""
    candidates = [run_dir / "run.log"] + sorted(run_dir.glob("*.log"))
    for p in candidates:
        if p.is_file():
            line = _last_line(p)
            if line:
                return line
    return None


def _load_config(path: Path) -> dict | None:
    for candidate in (path / "config.yaml", path / ".hydra" / "config.yaml"):
        if candidate.is_file():
            config = _read_yaml(candidate)
            if config is not None:
                return config
    return None


def _load_summary(path: Path) -> tuple[dict | None, str | None]:
    sp = path / "summary.json"
    if not sp.is_file():
        return None, None
    try:
        summary = json.loads(sp.read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return None, f"summary.json unreadable: {exc}"
    return summary, None


def _status_and_error(path: Path, summary: dict | None, read_error: str | None) -> tuple[str, str | None]:
    if summary is None:
        error = read_error or "no summary.json (the run never finished)"
        tail = _last_log_line(path)
        return UNFINISHED, error + (f"; last log line: {tail}" if tail else "")
    status = str(summary.get("status") or "unknown")
    err = summary.get("error")
    error = None if err in (None, "") else str(err)
    if status != COMPLETED and error is None:
        error = f"status {status!r}, no error recorded"
    return status, error


def load_run(path: Path) -> Run:
    path = Path(path)
    raw_config = _load_config(path)
    config = dict(raw_config or {})
    config.pop("hydra", None)
    summary, read_error = _load_summary(path)
    status, error = _status_and_error(path, summary, read_error)
    flat_summary = {k: v for k, v in flatten(summary or {}).items()
                    if k not in ("status", "error") and k not in IDENTITY}
    return Run(path=path, status=status, config=config, summary=summary, error=error,
               flat_config=flatten(config), flat_summary=flat_summary, has_config=raw_config is not None)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    return [load_run(p) for p in find_run_dirs(paths)]


def training_runs(runs: Iterable[Run]) -> list[Run]:
    """The runs that trained (`job=train`): what tables, plots and paper claims average."""
    return [r for r in runs if r.is_training]


def run_at(path: str | Path, runs: Iterable[Run]) -> Run | None:
    """The run among `runs` whose folder is `path` (compared resolved)."""
    p = Path(path)
    try:
        want = p.resolve()
    except OSError:
        want = p
    for r in runs:
        try:
            if Path(r.path).resolve() == want:
                return r
        except OSError:
            continue
    return None


def find_run(path: str | Path | None, runs: Iterable[Run]) -> Run | None:
    """The run at `path`: among `runs` (by resolved path), else loaded from disk; None when the
    folder holds no run."""
    if path is None:
        return None
    found, p = run_at(path, runs), Path(path)
    if found is not None:
        return found
    if p.is_dir() and is_run_dir(p):
        return load_run(p)
    return None


def failed_runs(sweep_dir: str | Path) -> list[Path]:
    """Run dirs under `sweep_dir` whose status is not "completed" (unfinished ones included)."""
    return [r.path for r in load_runs([sweep_dir]) if not r.completed]
