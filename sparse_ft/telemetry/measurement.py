"""Was this job measured alone? summary.json `measurement`, so that memory and time figures are
put side by side only when they are comparable.

- `process`: "own" when this job is the first the process ran (nothing an earlier job left
  resident or cached is in its figures), "shared" when the process ran `jobs_before_in_process`
  jobs before it (Hydra's basic launcher runs a multirun's jobs one after another in one process);
- `concurrent_jobs`: the most sparse-ft jobs (distinct run directories, this one included) alive
  on this machine at once while this job ran, observed, not taken from the launcher: every job
  registers a file under `$SPARSE_FT_JOBS_DIR` (default `<tmp>/sparse_ft_jobs`) and counts the
  live ones at each phase start and every `SAMPLE_S` seconds (the ranks of one torchrun job share a
  run directory and count once);
- `cpu_load_max`: the highest 1-minute load average seen (other programs share cores too), with
  `cpus` the CPUs this process may use;
- `launcher`: the Hydra launcher, or `each_process` under `python -m sparse_ft.jobs.each_process`;
- `comparable`: own process and no other job at the same time; else `why_not` says which.

`measurement.alone=true` (set by the memory sweeps) refuses, before anything loads, a job that
would not be comparable by construction: one in a process that already ran a job, or one under a
launcher that runs jobs side by side (submitit_local, joblib).
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from pathlib import Path

from ..core.errors import ConfigError

SAMPLE_S = 2.0
LAUNCHER_ENV = "SPARSE_FT_LAUNCHER"  # set by sparse_ft.jobs.each_process for the jobs it starts
_jobs_started_in_process = 0


def jobs_dir() -> Path:
    return Path(os.environ.get("SPARSE_FT_JOBS_DIR") or Path(tempfile.gettempdir()) / "sparse_ft_jobs")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def launcher_name() -> str | None:
    if os.environ.get(LAUNCHER_ENV):
        return os.environ[LAUNCHER_ENV]
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ..core.threads import hydra_launcher

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None  # a single run: no launcher
    target = hydra_launcher()
    return None if target is None else str(target).rsplit(".", 1)[-1]


def check_alone(cfg) -> None:
    """`measurement.alone`: refuse a job whose figures could not be compared (see the module docstring)."""
    node = cfg.get("measurement") or {}
    if not node.get("alone", False):
        return
    if _jobs_started_in_process > 0:
        raise ConfigError("measurement.alone", f"this process already ran {_jobs_started_in_process} job(s): its memory and time "
                          "figures would not compare with a fresh process's. Run each job in its own process: "
                          "python -m sparse_ft.jobs.each_process <the same arguments as run.py -m>")
    from ..core.threads import hydra_launcher, is_parallel_launcher

    launcher = hydra_launcher()
    if is_parallel_launcher(launcher):
        raise ConfigError("measurement.alone", f"hydra launcher {launcher} runs jobs side by side on this machine: their memory and "
                          "time figures would not be comparable. Use python -m sparse_ft.jobs.each_process (one job at a time, "
                          "each in its own process)")


class JobRegistry:
    """This job's entry among the live sparse-ft jobs of the machine, and what it saw of the others."""

    def __init__(self, run_dir: Path | str, folder: Path | None = None):
        global _jobs_started_in_process
        self.jobs_before = _jobs_started_in_process
        _jobs_started_in_process += 1
        self.folder = Path(folder) if folder is not None else jobs_dir()
        self.run_dir = str(Path(run_dir).resolve())
        self.file = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.job"
        self.max_jobs = 1
        self.max_load: float | None = None
        self.registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.file.write_text(self.run_dir)
            self.registered = True
        except OSError:
            pass
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="sparse-ft-jobs", daemon=True)
        self._thread.start()

    def live_jobs(self) -> int:
        runs = {self.run_dir}
        try:
            entries = list(self.folder.glob("*.job"))
        except OSError:
            return 1
        for path in entries:
            try:
                pid = int(path.name.split("-", 1)[0])
            except ValueError:
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)  # a job that died without cleaning up
                continue
            try:
                runs.add(path.read_text())
            except OSError:
                continue
        return len(runs)

    def sample(self) -> None:
        self.max_jobs = max(self.max_jobs, self.live_jobs())
        try:
            load = os.getloadavg()[0]
            self.max_load = load if self.max_load is None else max(self.max_load, load)
        except OSError:
            pass

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self.sample()
        if self.registered:
            self.file.unlink(missing_ok=True)

    def block(self) -> dict:
        from ..core.threads import available_cpus

        process = "own" if self.jobs_before == 0 else "shared"
        why = []
        if process == "shared":
            why.append(f"its process ran {self.jobs_before} job(s) before it")
        if self.max_jobs > 1:
            why.append(f"{self.max_jobs - 1} other sparse-ft job(s) ran on this machine at the same time")
        block = {"process": process, "jobs_before_in_process": self.jobs_before, "concurrent_jobs": self.max_jobs,
                 "cpu_load_max": None if self.max_load is None else round(self.max_load, 2), "cpus": available_cpus(),
                 "launcher": launcher_name(), "comparable": not why}
        if why:
            block["why_not"] = "; ".join(why)
        if not self.registered:
            block["note"] = f"could not register in {self.folder}: concurrent jobs not observed"
        return block
