"""OmegaConf resolvers the config tree uses (`${run_stamp:}`, `${run_name:...}` in run-directory
names); imported by run.py before Hydra composes."""

import datetime
import os

from omegaconf import OmegaConf


def _process_start(pid: int) -> datetime.datetime | None:
    """When process `pid` started (Linux /proc), to the clock tick."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        boot = next(int(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime"))
        return datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def run_stamp() -> str:
    """`<date>/<time.microseconds>-<pid>`: unique per process, so two jobs started in the same
    second never share a run directory. Under torchrun every local rank gets the stamp of their
    common parent (the elastic agent), so all ranks of one job agree on one directory."""
    if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ:
        started = _process_start(os.getppid())
        if started is not None:
            return f"{started:%Y-%m-%d/%H-%M-%S-%f}-{os.getppid()}"
    return f"{datetime.datetime.now():%Y-%m-%d/%H-%M-%S-%f}-{os.getpid()}"


def run_name(job, source, task, method, model) -> str:
    """`<task>_<method>_<model>` of the run directory; evaluate/compress jobs are named after
    their source run (sparse_ft/config/source.py: run_label)."""
    if job not in ("evaluate", "compress"):
        return f"{task}_{method}_{model}"
    from .source import run_label

    return run_label(str(job), source, str(task), str(method), str(model))


OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)
