"""`source=`: the finished run (or weights file) that `job=evaluate` and `job=compress` read.

A run directory brings its own task, model, seed and trainer settings (so `job=evaluate
source=<run>` scores exactly what that run scored); a group the user set on the command line
wins, except the model, which must be the one the weights belong to.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.errors import ConfigError

WEIGHTS = Path("checkpoints") / "final" / "model.safetensors"
TAKEN_FROM_SOURCE = ("task", "model", "trainer", "seed")


def source_run_dir(cfg: DictConfig) -> Path | None:
    """The source as a run directory (None when it is a weights file)."""
    source = cfg.get("source")
    if source is None:
        raise ConfigError("source", f"job={cfg.job} needs source=<run dir>" + (" or <model.safetensors>" if cfg.job == "evaluate" else ""))
    path = Path(str(source))
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise ConfigError("source", f"{path} is not a run directory (no config.yaml)")
        return path
    if path.is_file() and path.suffix == ".safetensors" and cfg.job == "evaluate":
        return None
    kind = "a run directory" if cfg.job == "compress" else "a run directory or a .safetensors file"
    raise ConfigError("source", f"{path}: no such {kind}")


def weights_of(cfg: DictConfig) -> Path:
    run = source_run_dir(cfg)
    path = Path(str(cfg.source)) if run is None else run / WEIGHTS
    if not path.is_file():
        raise ConfigError("source", f"{path}: no final weights (was the run saved with trainer.save_final=true?)")
    return path


def source_summary(run: Path) -> dict:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError("source", f"{run}: no readable summary.json (the run has not finished)") from err


def command_line_groups() -> set[str]:
    """Top-level keys the user set on the command line (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key.split(".", 1)[0].split("@", 1)[0])
    return keys


def adopt_source(cfg: DictConfig) -> None:
    """Take the source run's task/model/trainer/seed into `cfg` (before config.yaml is written)."""
    run = source_run_dir(cfg)
    if cfg.job == "compress":
        status = source_summary(run).get("status")
        if status != "completed":
            raise ConfigError("source", f"{run}: the run is {status!r}, not completed: nothing final to compress")
    if run is None:
        return
    src = OmegaConf.load(run / "config.yaml")
    user = command_line_groups()
    if "model" in user and src.model.get("name") != cfg.model.get("name"):
        raise ConfigError("model", f"{cfg.model.get('name')!r} does not match the source run's model {src.model.get('name')!r} ({run})")
    with open_dict(cfg):
        for key in TAKEN_FROM_SOURCE:
            if key not in user and key in src:
                cfg[key] = src[key]
        cfg.source = str(run)
