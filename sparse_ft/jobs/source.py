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
    kind = "run directory" if cfg.job == "compress" else "run directory or .safetensors file"
    raise ConfigError("source", f"{path}: no such {kind}")


def weights_of(cfg: DictConfig) -> Path:
    run = source_run_dir(cfg)
    path = Path(str(cfg.source)) if run is None else run / WEIGHTS
    if not path.is_file():
        if run is not None:
            check_source_finished(run, str(cfg.job))  # a run that failed or never finished says so first
        raise ConfigError("source", f"{path}: no final weights (was the run saved with trainer.save_final=true?)")
    return path


def check_source_finished(run: Path, job: str, missing_ok: bool = False) -> None:
    """The source run must have completed: one that failed or was interrupted is named as such,
    in one line, with the error from its summary.json (never its config replayed as if the user
    had typed it). `missing_ok`: a run directory without summary.json passes (its weights decide)."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except FileNotFoundError:
        if missing_ok:
            return
        raise ConfigError("source", f"{run}: the source run has not finished (no summary.json: still running, or killed): nothing to {job}") from None
    except (OSError, ValueError) as err:
        raise ConfigError("source", f"{run}: the source run's summary.json is unreadable ({err})") from None
    if not isinstance(summary, dict):
        raise ConfigError("source", f"{run}: the source run's summary.json is not a JSON object")
    status = summary.get("status")
    if status == "completed":
        return
    how = {"failed": "failed", "interrupted": "was interrupted (not completed: resume it first)"}.get(status, f"ended with status {status!r}")
    error = " ".join(str(summary.get("error") or "no error recorded").split())  # one line
    if len(error) > 300:
        error = error[:300] + "…"
    raise ConfigError("source", f"{run}: the source run {how}, so there is nothing to {job}; its error: {error}")


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
    if run is None:
        return
    check_source_finished(run, str(cfg.job), missing_ok=cfg.job != "compress")  # before its config is adopted: a failed run's bad setting is not the user's
    src = OmegaConf.load(run / "config.yaml")
    user = command_line_groups()
    if "model" in user and src.model.get("name") != cfg.model.get("name"):
        raise ConfigError("model", f"{cfg.model.get('name')!r} does not match the source run's model {src.model.get('name')!r} ({run})")
    with open_dict(cfg):
        for key in TAKEN_FROM_SOURCE:
            if key not in user and key in src:
                cfg[key] = src[key]
        cfg.source = str(run)
