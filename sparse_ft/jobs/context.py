"""What every job shares: the run directory, the summary it always ends with, the loggers and the
telemetry. `RunContext.execute(body)` runs one job body and turns whatever happens into a
`summary.json` whose `status` says how the run ended; a run that has not finished has none.
First comes the pre-flight (preflight.py): rank 0 locks the run directory (rundir.RunDirLock),
every rank validates the config and checks a completed run's and a resumed checkpoint's settings
(resume.py); a job refused there exits 2 and leaves the directory as it found it (removed when
this launch made it).

Under torchrun a worker that fails must not take its error with it. When one rank fails, torchrun
stops the others with SIGTERM, which used to arrive while rank 0 was still handling the error it
got from the broken collective, and killed it before summary.json was written. Now:
- every rank that fails writes its error to `<run>/worker_errors/rank<r>.json` before it leaves
  (the run directory is shared by the ranks, as it is for the checkpoints; worker_errors.py);
- stop signals are guarded for the whole job, in every process (`SignalGuard`,
  train/preemption.py): inside the training step loop the trainer's pre-emption watcher owns
  them; outside it a signal stops the job with `Terminated` naming the phase (so the summary is
  written, `status: interrupted`, exit 128 + signal), and once the job is ending (an error is
  being handled, the summary written) it is only noted and cannot cut the write short;
- rank 0 writes a failed summary at once, then, when its own error is a broken collective (or
  the SIGTERM), waits a few seconds for the other ranks' error files and names the failing
  worker's error in `error` (all of them in `worker_errors`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import __version__
from ..core.errors import ConfigError, StorageError
from .preflight import is_multirun, preflight, run_dir_of
from .run_records import RunWriter
from .worker_errors import clear_worker_errors, describe, merge_worker_errors, record_worker_error
from ..train import distributed as D
from ..train.preemption import SignalGuard, Terminated  # noqa: F401  (Terminated: re-exported)

log = logging.getLogger("sparse_ft.jobs.entry")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    import importlib.metadata

    import hydra
    import omegaconf
    import transformers

    try:  # optional where no task loads GLUE from the hub (a GPU check machine may lack it)
        datasets_version = importlib.metadata.version("datasets")
    except importlib.metadata.PackageNotFoundError:
        datasets_version = None
    return {
        "sparse_ft": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets_version,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


class Telemetry:
    """Opens one phase on every monitor at once (time/memory and energy)."""

    def __init__(self, resources, energy, guard: SignalGuard | None = None):
        self.resources, self.energy, self.guard = resources, energy, guard

    @contextlib.contextmanager
    def phase(self, name: str):
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.resources.phase(name))
            if self.energy is not None:
                stack.enter_context(self.energy.phase(name))
            if self.guard is not None:  # a stop signal names the phase it came in
                stack.enter_context(self.guard.phase(name))
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
        self.guard = SignalGuard(False)  # execute() installs the real one
        self.lock = None  # rank 0's RunDirLock on the run directory, for the job's life
        self.preflight_error: BaseException | None = None
        self.resume: dict | None = None  # the resume check's record (summary.json `resume`)
        self.resolved_config: dict = {}  # the validated config, resolved (what checkpoints record)
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
        from ..telemetry.measurement import JobRegistry, check_alone
        from ..telemetry.resources import ResourceMonitor

        check_alone(self.cfg)  # measurement.alone: no job in a used process or beside others (ConfigError)
        registry = JobRegistry(self.run_dir)  # did the job have its process and the machine to itself?
        resources = ResourceMonitor(device, on_phase=registry.sample)
        energy = None
        if self.is_main:
            energy = EnergyMonitor(self.cfg.energy, self.run_dir)
            energy.start()
        self.telemetry = Telemetry(resources, energy, self.guard)
        try:
            yield self.telemetry
        except BaseException:
            self.guard.closing()  # an error leaves the job: a SIGTERM can no longer cut its ending short
            raise
        finally:
            self.summary["energy"] = energy.stop() if energy is not None else {"available": False, "reason": "not started"}
            registry.close()
            self.summary["measurement"] = registry.block()
            self.summary.setdefault("memory", resources.memory_block())

    def execute(self, body: Callable[["RunContext"], float | None], validate: Callable[[DictConfig], None]) -> float | None:
        """Single run: an error exits non-zero (2 for bad input, with the message). Multirun: the
        job's error is recorded in its summary.json and run.log and the sweep goes on."""
        from ..models.text import ModelLoadError
        from ..tasks.base import DataError
        from ..train.checkpoint import CheckpointError
        from ..train.preemption import Preempted

        user_errors = (ConfigError, DataError, ModelLoadError, CheckpointError, StorageError)
        cfg, run_dir = self.cfg, self.run_dir
        started = time.perf_counter()
        if not self.is_main:  # one voice in the console and run.log: rank 0's
            logging.getLogger("sparse_ft").setLevel(logging.WARNING)
        distributed = self.dist_info.world_size > 1
        # one owner of SIGTERM, SIGINT and the pre-emption signals for the whole job, in every process
        self.guard = SignalGuard(True, (cfg.get("trainer") or {}).get("preempt_signals") or (), distributed)
        self.guard.install()  # from the pre-flight on: a signal there stops the job too
        try:
            skip, done = preflight(self, validate, user_errors)
        except BaseException:
            self.guard.restore()
            raise
        if skip:
            self.guard.restore()
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
        started_at = time.time()
        error: BaseException | None = None
        if distributed and self.is_main:
            clear_worker_errors(run_dir, started_at)
        try:
            if self.preflight_error is not None:  # a multirun job's new directory records its error like any failure
                raise self.preflight_error
            summary.update(task=cfg.task.name, method=cfg.method.name, model=cfg.model.name, seed=cfg.seed)  # a source run may have set them
            from ..core.threads import configure_threads

            summary["num_threads"] = configure_threads(cfg)  # before any tensor work: one thread per job under parallel launchers
            log.info("CPU threads: %d (trainer.num_threads=%s)", summary["num_threads"], cfg.trainer.get("num_threads", "auto"))
            if self.is_main:
                # the effective config: what runs, after the job resolved its source and batch sizes
                from ..core.io import writing

                with writing(run_dir / "config.yaml"):
                    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
                from ..loggers import build_logger

                self.logger = build_logger(cfg, run_dir)
                self.writer.listeners.append(self.logger.log)
            result = body(self)
            summary["status"] = "completed"
            return result
        except Preempted as err:
            self.guard.closing()
            error = err
            summary["status"] = "interrupted"
            summary["error"] = str(err)
            log.warning("%s", err)
            raise SystemExit(err.exit_code) from err
        except Terminated as err:
            self.guard.closing()
            error = err
            summary["status"] = "interrupted"
            cause = err.__context__  # the signal came while an error was on its way out: that error first
            summary["error"] = f"{describe(cause)}; then {err}" if cause is not None else str(err)
            log.warning("%s; %s; exit %d", summary["error"], self._resume_hint(err), err.exit_code)
            raise SystemExit(err.exit_code) from err
        except user_errors as err:
            self.guard.closing()
            error = err
            summary["error"] = f"{type(err).__name__}: {err}"
            log.error("%s", err)
            if is_multirun():
                return None
            raise SystemExit(2) from err
        except SystemExit as err:  # a launcher's signal handler ended the job (submitit's requeue)
            self.guard.closing()
            if self.guard.launcher_signal is not None:
                signum, where = self.guard.launcher_signal
                summary["status"] = "interrupted"
                summary["error"] = f"{signal.Signals(signum).name} received {where}: the launcher's handler ended the job (exit {err.code})"
                log.warning("%s", summary["error"])
            raise
        except KeyboardInterrupt as err:  # SIGINT while the guard does not hold it
            self.guard.closing()
            error = err
            summary["status"] = "interrupted"
            summary["error"] = "KeyboardInterrupt (SIGINT): stopped at once"
            log.warning("%s; exit 130", summary["error"])
            raise SystemExit(130) from err
        except Exception as err:
            self.guard.closing()
            error = err
            summary["error"] = f"{type(err).__name__}: {err}"
            log.exception("run failed: %s", err)
            if is_multirun():
                return None
            raise
        finally:
            self.guard.closing()  # from here on a SIGTERM (torchrun stopping the job) is only noted
            summary.setdefault("time", {}).setdefault("wall_s", {})["total"] = time.perf_counter() - started
            if self.is_main:
                if not (run_dir / "config.yaml").exists():  # failed validation: still say what was asked
                    try:
                        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=False)
                    except OSError as err:  # a full disk: the job's own error matters more
                        log.error("%s: %s", run_dir / "config.yaml", err)
                if summary["status"] != "completed":
                    self._write_summary()  # at once: the summary exists whatever comes next
                    if distributed:
                        merge_worker_errors(run_dir, summary, self.writer, error, started_at)
            elif distributed and error is not None and not isinstance(error, Preempted):
                record_worker_error(run_dir, self.dist_info.rank, error)  # rank 0 names it in its summary
            summary["versions"] = versions()
            summary["git_commit"] = git_commit()
            if self.is_main:
                summary.update(self.logger.status)
                self._write_summary()
                log.info("%s: %s", summary["status"], run_dir / "summary.json")
                self._mirror_to_logger()
            self.writer.close()
            D.teardown()
            self.guard.restore()
            if self.lock is not None:
                self.lock.release()

    def _write_summary(self) -> None:
        """summary.json at the end of the job; a full disk is logged (naming the file), not raised
        over the job's own outcome."""
        try:
            self.writer.write_summary(self.summary)
        except StorageError as err:
            log.error("%s", err)

    def _resume_hint(self, err: Terminated) -> str:
        """What a re-launch of this run directory will do after a stop signal."""
        if self.cfg.get("job", "train") != "train":
            return "nothing to resume: run the job again"
        if err.checkpoint_step is not None:
            return "a resume loads that checkpoint and evaluates again"
        from ..train.checkpoint import find_checkpoint

        found = find_checkpoint(self.run_dir)
        if found is None:
            return "no checkpoint was written: a resume starts the run over"
        try:
            step = json.loads((found / "manifest.json").read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            step = None
        return f"a resume continues from {found}" + (f" (optimizer step {step})" if step is not None else "")

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
