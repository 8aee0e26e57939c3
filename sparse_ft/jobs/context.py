"""What every job shares: the run directory, the summary it always ends with, the loggers and the
telemetry. `RunContext.execute(body)` runs one job body and turns whatever happens into a
`summary.json` whose `status` says how the run ended; a run that has not finished has none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from ..core.errors import ConfigError
from ..results import RunWriter
from ..train import distributed as D

log = logging.getLogger("sparse_ft.entry")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("run_dir") or "outputs/adhoc")


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import datasets
    import hydra
    import omegaconf
    import transformers

    return {
        "sparse_ft": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def previous_result(run_dir: Path) -> float | None:
    """A completed run in this directory (a requeued or re-launched sweep job): its main metric."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    return (summary.get("metrics") or {}).get("main", float("nan"))


class Telemetry:
    """Opens one phase on every monitor at once (time/memory and energy)."""

    def __init__(self, resources, energy):
        self.resources, self.energy = resources, energy

    @contextlib.contextmanager
    def phase(self, name: str):
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.resources.phase(name))
            if self.energy is not None:
                stack.enter_context(self.energy.phase(name))
            yield


class RunContext:
    """One job's run directory, summary, loggers and telemetry."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = run_dir_of(cfg)
        self.dist_info = D.env_info()
        self.writer: RunWriter | None = None
        self.summary: dict = {}
        self.telemetry: Telemetry | None = None
        from ..loggers.base import NullLogger

        self.logger = NullLogger()

    @property
    def is_main(self) -> bool:
        return self.dist_info.is_main

    @contextlib.contextmanager
    def monitored(self, device: torch.device):
        """Time/memory per phase and (rank 0) GPU energy for the body of the job; their blocks
        land in the summary whatever happens."""
        from ..telemetry.energy import EnergyMonitor
        from ..telemetry.resources import ResourceMonitor

        resources = ResourceMonitor(device)
        energy = None
        if self.is_main:
            energy = EnergyMonitor(self.cfg.energy, self.run_dir)
            energy.start()
        self.telemetry = Telemetry(resources, energy)
        try:
            yield self.telemetry
        finally:
            self.summary["energy"] = energy.stop() if energy is not None else {"available": False, "reason": "not started"}
            self.summary.setdefault("memory", resources.memory_block())

    def execute(self, body: Callable[["RunContext"], float | None], validate: Callable[[DictConfig], None]) -> float | None:
        """Single run: an error exits non-zero (2 for bad input, with the message). Multirun: the
        job's error is recorded in its summary.json and run.log and the sweep goes on."""
        from ..models.text import ModelLoadError
        from ..tasks.base import DataError
        from ..train.checkpoint import CheckpointError
        from ..train.preemption import Preempted

        user_errors = (ConfigError, DataError, ModelLoadError, CheckpointError)
        cfg, run_dir = self.cfg, self.run_dir
        started = time.perf_counter()
        if not self.is_main:  # one voice in the console and run.log: rank 0's
            logging.getLogger("sparse_ft").setLevel(logging.WARNING)
        if cfg.get("job", "train") == "train" and cfg.trainer.get("resume", "auto") == "auto" and self.is_main:
            done = previous_result(run_dir)
            if done is not None:
                log.info("%s already holds a completed run: not training again", run_dir)
                return done
        self.writer = RunWriter(run_dir, enabled=self.is_main)
        self.summary = {
            "status": "failed",
            "job": cfg.get("job", "train"),
            "task": cfg.task.name,
            "method": cfg.method.name,
            "model": cfg.model.name,
            "seed": cfg.seed,
            "experiment": cfg.get("name"),
            "run_dir": str(run_dir),
        }
        summary = self.summary
        try:
            validate(cfg)  # before any data or weights are touched
            summary.update(task=cfg.task.name, model=cfg.model.name, seed=cfg.seed)  # a source run may have set them
            from ..train.threads import configure_threads

            summary["num_threads"] = configure_threads(cfg)  # before any tensor work: one thread per job under parallel launchers
            log.info("CPU threads: %d (trainer.num_threads=%s)", summary["num_threads"], cfg.trainer.get("num_threads", "auto"))
            if self.is_main:
                # the effective config: what runs, after the job resolved its source and batch sizes
                OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
                from ..loggers import build_logger

                self.logger = build_logger(cfg, run_dir)
                self.writer.listeners.append(self.logger.log)
            result = body(self)
            summary["status"] = "completed"
            return result
        except Preempted as err:
            summary["status"] = "interrupted"
            summary["error"] = str(err)
            log.warning("%s", err)
            raise SystemExit(err.exit_code) from err
        except user_errors as err:
            summary["error"] = f"{type(err).__name__}: {err}"
            log.error("%s", err)
            if is_multirun():
                return None
            raise SystemExit(2) from err
        except KeyboardInterrupt:
            summary["status"] = "interrupted"
            summary["error"] = "KeyboardInterrupt"
            raise
        except Exception as err:
            summary["error"] = f"{type(err).__name__}: {err}"
            log.exception("run failed: %s", err)
            if is_multirun():
                return None
            raise
        finally:
            summary.setdefault("time", {}).setdefault("wall_s", {})["total"] = time.perf_counter() - started
            summary["versions"] = versions()
            summary["git_commit"] = git_commit()
            if self.is_main:
                if not (run_dir / "config.yaml").exists():  # failed validation: still say what was asked
                    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
                summary.update(self.logger.status)
                self.writer.write_summary(summary)
                log.info("%s: %s", summary["status"], run_dir / "summary.json")
                self._mirror_to_logger()
            self.writer.close()
            D.teardown()

    def _mirror_to_logger(self) -> None:
        """The summary and the energy samples go to the tracker too; then the tracker's run ends
        (with an exit code, also on failure, so multirun jobs never merge into one W&B run)."""
        import csv

        self.logger.log_summary(self.summary)
        energy_csv = self.run_dir / "energy.csv"
        if energy_csv.is_file():
            with open(energy_csv, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.logger.log_series("energy", rows)
        self.logger.finish(0 if self.summary["status"] == "completed" else 1)

    def time_block(self, steps: int, epochs: int, samples: int, tokens: int) -> dict:
        resources = self.telemetry.resources
        train_s = resources.seconds.get("train", 0.0)
        return {
            "wall_s": dict(resources.seconds),
            "steps": steps,
            "epochs_completed": epochs,
            "train_samples": samples,
            "train_samples_per_s": samples / train_s if train_s else None,
            "train_tokens_per_s": tokens / train_s if train_s and tokens else None,
        }
