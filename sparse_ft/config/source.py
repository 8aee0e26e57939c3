"""`source=`: the finished run (or weights file) that `job=evaluate` and `job=compress` read.

A run directory brings its own task, model, seed and trainer settings (so `job=evaluate
source=<run>` scores exactly what that run scored); a group the user set on the command line
wins, except the model, which must be the one the weights belong to. `job=evaluate` also takes
the source's `method` (the weights are that method's result, and its summary says so); a
compress job's method is its compressor, and its summary names the source's method beside it.
The run directory is named the same way (`run_label`, through `${run_name:...}` in
conf/config.yaml): `<stamp>_<task>_<method>_<model>_evaluate|_compress`, from the source.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from ..core.errors import ConfigError
from ..core.runs import FINAL_WEIGHTS, has_config, run_config, run_setting, run_summary

WEIGHTS = FINAL_WEIGHTS
TAKEN_FROM_SOURCE = ("task", "model", "trainer", "seed")
WEIGHTS_FILE_METHOD = "weights"  # what a run directory is named after when the source is a weights file (method unknown)


def source_run_dir(cfg: DictConfig) -> Path | None:
    """The source as a run directory (None when it is a weights file)."""
    source = cfg.get("source")
    if source is None:
        raise ConfigError("source", f"job={cfg.job} needs source=<run dir>" + (" or <model.safetensors>" if cfg.job == "evaluate" else ""))
    path = Path(str(source))
    if path.is_dir():
        if not has_config(path):
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
        summary = run_summary(run)
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


def source_method(run: Path | None) -> str | None:
    """The method whose weights a source run holds (its config's `method.name`); None for a
    weights file or an unreadable config."""
    return None if run is None else run_setting(run, "method.name")


def run_label(job: str, source, task: str, method: str, model: str) -> str:
    """`<task>_<method>_<model>` of a run directory's name. Train: the run's own groups.
    Evaluate: the source run's task, method and model (`_evaluate` appended; a weights file
    has no method: "weights"); compress: the source's task and model with the compressor as the
    method (`_compress`). A group set on the command line wins, as in `adopt_source`. Never
    raises: an unreadable source falls back to the given names (validation names the problem)."""
    if job not in ("evaluate", "compress") or source is None:
        return f"{task}_{method}_{model}"
    path = Path(str(source))
    run = path if has_config(path) else None
    if run is not None:
        try:
            src = run_config(run)
            user = command_line_groups()
            task = task if "task" in user else OmegaConf.select(src, "task.name", default=task)
            model = model if "model" in user else OmegaConf.select(src, "model.name", default=model)
        except Exception:  # noqa: BLE001 - see above
            pass
    if job == "evaluate":
        method = source_method(run) or (WEIGHTS_FILE_METHOD if path.is_file() else method)
    return f"{task}_{method}_{model}_{job}"


def source_summary(run: Path) -> dict:
    try:
        return run_summary(run)
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
    """Take the source run's task/model/trainer/seed (evaluate: its method too) into `cfg` (before config.yaml is written)."""
    run = source_run_dir(cfg)
    if run is None:
        return
    check_source_finished(run, str(cfg.job), missing_ok=cfg.job != "compress")  # before its config is adopted: a failed run's bad setting is not the user's
    src = run_config(run)
    user = command_line_groups()
    if "model" in user and src.model.get("name") != cfg.model.get("name"):
        raise ConfigError("model", f"{cfg.model.get('name')!r} does not match the source run's model {src.model.get('name')!r} ({run})")
    taken = TAKEN_FROM_SOURCE
    if cfg.job == "evaluate" and "method" in src:  # the weights are that method's result
        if "method" in user and src.method.get("name") != cfg.method.get("name"):
            raise ConfigError("method", f"job=evaluate scores the source run's weights, which are {src.method.get('name')!r}'s, "
                                        f"not {cfg.method.get('name')!r}'s ({run}): leave method= out")
        taken = (*taken, "method")
    with open_dict(cfg):
        for key in taken:
            if (key not in user or key == "method") and key in src:
                cfg[key] = src[key]
        cfg.source = str(run)
