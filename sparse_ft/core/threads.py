"""CPU threads per job (`trainer.num_threads`).

torch starts one intra-op thread per core. Several jobs side by side on one machine (Hydra's
`submitit_local` or `joblib` launchers) then run jobs × cores threads on cores cores, and
oversubscription makes every job many times slower (measured: the quickstart took 569 s on a
loaded 2-core machine and 102 s with one thread). So:

* `auto` (default): torch's own default (which honours OMP_NUM_THREADS; torchrun sets it to 1 for
  several workers per node) when the job runs alone, 1 thread when Hydra launched it through a
  launcher that runs several jobs on the same machine at once;
* an integer N: exactly N threads.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

# Hydra launchers (class names of `hydra.launcher._target_`) that run several jobs on this machine at once
PARALLEL_LAUNCHERS = ("LocalLauncher", "JoblibLauncher", "RayLauncher")


def is_parallel_launcher(launcher: str | None) -> bool:
    """`launcher`: a Hydra launcher target (`hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher`) or a short name."""
    if not launcher:
        return False
    name = str(launcher).rsplit(".", 1)[-1]
    short = {"submitit_local": "LocalLauncher", "joblib": "JoblibLauncher", "ray": "RayLauncher"}.get(name, name)
    return short in PARALLEL_LAUNCHERS


def decide_threads(setting, cpu_count: int, launcher: str | None) -> int | None:
    """How many intra-op threads a job should use; None = leave torch's default alone.

    `setting`: the value of trainer.num_threads (`auto` or an int >= 1); `cpu_count`: CPUs this
    process may use; `launcher`: the Hydra launcher target (None outside Hydra / basic launcher)."""
    if setting is None or setting == "auto":
        if is_parallel_launcher(launcher):
            return 1
        return None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"trainer.num_threads={setting!r}: expected auto or an integer >= 1")
    if setting > max(1, cpu_count):
        log.warning("trainer.num_threads=%d is more than the %d CPUs this process may use", setting, cpu_count)
    return setting


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hydra_launcher() -> str | None:
    """The launcher target of the running Hydra job (None outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        launcher = HydraConfig.get().get("launcher")
        return None if launcher is None else launcher.get("_target_")
    except Exception:  # noqa: BLE001 - an unusual Hydra setup must not stop a run
        return None


def configure_threads(cfg) -> int:
    """Apply trainer.num_threads (`cfg`: the run config or its trainer node); returns the number of
    intra-op threads torch now uses. Call once at job start, before any tensor work."""
    trainer = cfg.get("trainer", cfg) if hasattr(cfg, "get") else cfg
    setting = trainer.get("num_threads", "auto") if trainer is not None else "auto"
    n = decide_threads(setting, available_cpus(), hydra_launcher())
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
        if n == 1:
            try:  # only possible before any inter-op parallel work started; harmless to skip
                torch.set_num_interop_threads(1)
            except RuntimeError:
                pass
    return torch.get_num_threads()
