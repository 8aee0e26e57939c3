"""Reading a finished run directory: its `config.yaml`, `summary.json` and final weights. The one
reader for every consumer of a finished run: `source=` of job=evaluate / job=compress
(config/source.py) and a method that starts from one (`method.init_from`, methods/start.py).
Checks and error messages stay with the callers (they name their own config key)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.yaml"
SUMMARY = "summary.json"
FINAL_WEIGHTS = Path("checkpoints") / "final" / "model.safetensors"


def has_config(path) -> bool:
    """Is `path` a run directory (it holds the config.yaml every run writes)?"""
    return (Path(str(path)) / CONFIG).is_file()


def final_weights(run) -> Path:
    """Where a run directory keeps its final weights (whether or not the run saved them)."""
    return Path(str(run)) / FINAL_WEIGHTS


def run_config(run):
    """The run's config.yaml as an OmegaConf DictConfig; raises what reading it raises."""
    from omegaconf import OmegaConf

    return OmegaConf.load(Path(str(run)) / CONFIG)


def run_setting(run, key: str) -> str | None:
    """One setting of the run's config.yaml (e.g. "model.name") as a string; None when the file,
    the key or its value is missing or unreadable (the caller decides whether that matters)."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(run_config(run), key)
    except Exception:  # noqa: BLE001 - a setting is all that is asked; validation reports the rest
        return None
    return None if value is None else str(value)


def run_summary(run) -> dict:
    """The run's summary.json; raises FileNotFoundError (none yet), OSError or ValueError."""
    return json.loads((Path(str(run)) / SUMMARY).read_text())
