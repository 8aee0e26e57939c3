"""Experiment trackers, chosen by the `logger` config group (`conf/logger/*.yaml`).

    logger = build_logger(cfg, run_dir)   # cfg: the whole composed config
    logger.log(record)                    # each metrics.jsonl record
    logger.log_series(name, rows)         # optional time series (energy / memory samples)
    logger.log_summary(summary)           # the summary.json dict
    logger.finish(exit_code)              # always, also on failure
    summary.update(logger.status)         # {"wandb": {"ok": ..., ...}}; {} for logger=none

Trackers mirror the run directory and never take a run down; only a config value that cannot
work (an unknown logger or W&B mode) raises, as a `ConfigError`, before anything starts.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..core.errors import ConfigError
from .base import NullLogger

__all__ = ["build_logger", "NullLogger", "LOGGERS"]

LOGGERS = ("none", "wandb")


def build_logger(cfg: DictConfig, run_dir: Path | str):
    lcfg = cfg.get("logger")
    name = str(lcfg.get("name") or "none") if lcfg is not None else "none"
    if name == "none":
        return NullLogger()
    if name == "wandb":
        from .wandb_logger import MODES, WandbLogger

        mode = str(lcfg.get("mode") or "offline").lower()
        if mode not in MODES:
            raise ConfigError("logger.mode", f"{mode!r} is not a W&B mode; choose one of {', '.join(MODES)}")
        return WandbLogger.start(cfg, Path(run_dir))
    raise ConfigError("logger.name", f"unknown logger {name!r}; choose one of {', '.join(LOGGERS)} (conf/logger/)")
