"""What every job shares: the run directory, the summary it always ends with, the loggers and the
telemetry. `RunContext.execute(body)` runs one job body and turns whatever happens into a
`summary.json` whose `status` says how the run ended; a run that has not finished has none.
First comes `_preflight`: rank 0 locks the run directory (rundir.RunDirLock), every rank validates
the config and checks a completed run's and a resumed checkpoint's settings (resume.py); a job
refused there exits 2 and leaves the directory as it found it (removed when this launch made it).

Under torchrun a worker that fails must not take its error with it. When one rank fails, torchrun
stops the others with SIGTERM, which used to arrive while rank 0 was still handling the error it
got from the broken collective, and killed it before summary.json was written. Now:
- every rank that fails writes its error to `<run>/worker_errors/rank<r>.json` before it leaves
  (the run directory is shared by the ranks, as it is for the checkpoints);
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
from .run_records import RunWriter
from ..train import distributed as D
from ..train.preemption import SignalGuard, Terminated  # noqa: F401  (Terminated: re-exported)

log = logging.getLogger("sparse_ft.jobs.entry")


WORKER_ERRORS = "worker_errors"  # <run>/worker_errors/rank<r>.json: a failed rank's error, for rank 0's summary
WORKER_ERROR_SKEW_S = 10.0  # the ranks of one launch start within this (older files are an earlier attempt's)
WORKER_ERROR_WAIT_S = 5.0  # how long rank 0 waits for them after a broken collective (torchrun's SIGKILL comes after 30 s)
PEER_FAILURE_MARKERS = ("peer worker is gone", "Connection closed by peer", "Connection reset by peer", "Broken pipe",
                        "Timed out", "timed out", "Timeout", "NCCL", "gloo", "ProcessGroup")


def is_peer_failure(err: BaseException | None) -> bool:
    """Does this error look like another rank's failure seen from here (a broken or timed-out
    collective, torchrun's SIGTERM) rather than this rank's own?"""
    if err is None:
        return False
    if isinstance(err, Terminated):
        return True
    import torch.distributed as tdist

    if isinstance(err, getattr(tdist, "DistError", ())):
        return True
    return any(m in str(err) for m in PEER_FAILURE_MARKERS)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def record_worker_error(run_dir: Path, rank: int, err: BaseException) -> None:
    """A failing rank's error, for rank 0 (written atomically; never raises)."""
    import traceback

    from ..core.io import atomic_write_text

    try:
        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        record = {"rank": rank, "error": describe(err), "peer_failure": is_peer_failure(err), "time": time.time(), "traceback": tb[-4000:]}
        atomic_write_text(Path(run_dir) / WORKER_ERRORS / f"rank{rank}.json", json.dumps(record, indent=1))
    except Exception as write_err:  # noqa: BLE001 - the job's own error matters more
        log.warning("could not record rank %d's error in %s: %s", rank, run_dir / WORKER_ERRORS, write_err)


def worker_errors(run_dir: Path, since: float, wait_s: float = 0.0) -> list[dict]:
    """The other ranks' error records written since `since` (seconds since the epoch), waiting
    up to `wait_s` for one that is a worker's own error (not just a broken collective), which
    then comes first."""
    folder = Path(run_dir) / WORKER_ERRORS
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in sorted(folder.glob("rank*.json")) if folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("time", 0) >= since:
                found.append(record)
        if any(not r.get("peer_failure") for r in found) or time.monotonic() >= deadline:
            return sorted(found, key=lambda r: (bool(r.get("peer_failure")), r.get("time", 0)))
        time.sleep(0.1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("run_dir") or "outputs/adhoc")


def hydra_launched() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


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
            skip, done = self._preflight(validate, user_errors)
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
            self._clear_worker_errors(started_at)
        try:
            if self.preflight_error is not None:  # a multirun job's new directory records its error like any failure
                raise self.preflight_error
            summary.update(task=cfg.task.name, method=cfg.method.name, model=cfg.model.name, seed=cfg.seed)  # a source run may have set them
            from ..train.threads import configure_threads

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
                        self._merge_worker_errors(error, started_at)
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

    def _leave_as_found(self, run_dir: Path, created) -> None:
        """A job that will not run here: release the lock without touching the directory's records
        (rank 0 restores what this launch changed; other ranks detach from run.log)."""
        from .rundir import detach_run_log, leave_as_found

        if self.lock is not None:
            self.lock.forget()
            self.lock = None
        if self.is_main:
            leave_as_found(run_dir, created, hydra_launch=hydra_launched())
        else:
            detach_run_log(run_dir)

    def _preflight(self, validate: Callable[[DictConfig], None], user_errors: tuple) -> tuple[bool, float | None]:
        """Before anything is written to the run directory: lock it (rank 0), validate the config,
        check a completed run's and a resumed checkpoint's settings (every rank decides alike).
        Returns (True, result) for a completed run relaunched with its own settings (nothing is
        done). A refusal (bad config, directory in use, other settings) leaves the directory as
        it was (removed when this launch made it) and exits 2 (multirun: the sweep goes on; a
        new job directory of a multirun records the error in its summary.json instead, so the
        sweep's report and exit status name it)."""
        from .resume import check_resume, completed_run, describe as describe_differences, resolved
        from .rundir import RunDirBusy, RunDirLock, detach_run_log, leave_as_found

        cfg, run_dir = self.cfg, self.run_dir
        created = False
        try:
            if self.is_main:
                if not run_dir.exists():
                    run_dir.mkdir(parents=True)
                    created = True
                lock = RunDirLock(run_dir)
                lock.acquire()  # RunDirBusy: another live process holds it
                self.lock = lock
            validate(cfg)  # before any data or weights are touched
            self.resolved_config = resolved(cfg)
            done = completed_run(cfg, run_dir)
            if done is not None:
                self._leave_as_found(run_dir, created)
                log.info("%s already holds a completed run with these settings: not training again (the directory is left unchanged)", run_dir)
                return True, done
            self.resume = check_resume(cfg, run_dir)
            if self.lock is not None:
                self.lock.note_takeover()
            if self.resume is not None and self.resume["forced"]:
                log.warning("resuming from %s with other settings (trainer.resume_force=true): %s",
                            self.resume["from"], describe_differences(self.resume["differing"]))
            return False, None
        except (*user_errors, RunDirBusy) as err:
            new = created or not self.is_main or not (run_dir / "config.yaml").exists()
            if is_multirun() and new and not isinstance(err, RunDirBusy):
                self.preflight_error = err
                return False, None
            if self.lock is not None:
                self.lock.forget()
                self.lock = None
            what = "left as it was"
            if self.is_main:
                what = leave_as_found(run_dir, created, in_use=isinstance(err, RunDirBusy), hydra_launch=hydra_launched())
            else:
                detach_run_log(run_dir)  # rank 0 tells; nothing of this job goes into the directory
            log.error("%s", err)
            log.error("nothing was run; %s: %s", run_dir, "removed (this launch had created it)" if what == "removed" else "left as it was")
            if is_multirun():
                from .rundir import REFUSED

                REFUSED[str(run_dir.resolve())] = str(err)  # no summary of its own: the sweep's end counts it as failed
                return True, None
            raise SystemExit(2) from err
        except Terminated as err:  # a stop signal during the pre-flight
            if created or not (run_dir / "config.yaml").exists():  # a new run: its summary says interrupted
                self.preflight_error = err
                return False, None
            self._leave_as_found(run_dir, created)  # an existing run (completed, or to be resumed): left as it was
            log.warning("%s; nothing was run, %s left as it was; exit %d", err, run_dir, err.exit_code)
            raise SystemExit(err.exit_code) from err
        except Exception as err:  # noqa: BLE001 - a bug in a check: recorded like any failure
            self.preflight_error = err
            return False, None

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

    def _clear_worker_errors(self, now: float) -> None:
        folder = self.run_dir / WORKER_ERRORS
        for path in folder.glob("rank*.json") if folder.is_dir() else []:
            try:
                if path.stat().st_mtime < now - WORKER_ERROR_SKEW_S:  # an earlier attempt's
                    path.unlink()
            except OSError:
                pass

    def _merge_worker_errors(self, error: BaseException | None, started_at: float) -> None:
        """Rank 0 after a failure: the other ranks' errors into the summary. When its own error
        is a broken collective or torchrun's SIGTERM, the failing worker's error is the cause."""
        peer = is_peer_failure(error)
        found = worker_errors(self.run_dir, started_at - WORKER_ERROR_SKEW_S, WORKER_ERROR_WAIT_S if peer else 0.0)
        summary = self.summary
        if not found:
            if peer:
                summary["error"] = f"{summary.get('error')} (no other rank recorded an error of its own: a worker was killed or exited hard; see torchrun's output)"
                self.writer.write_summary(summary)
            return
        summary["worker_errors"] = [{k: r.get(k) for k in ("rank", "error", "peer_failure")} for r in found]
        cause = found[0]  # a worker's own error sorts first; one that only saw a broken collective blames nobody
        if peer and not cause.get("peer_failure"):
            summary["status"] = "failed"
            summary["error"] = f"worker rank {cause['rank']} failed: {cause['error']} (rank 0 saw: {summary.get('error')})"
            log.error("%s", summary["error"])
        self.writer.write_summary(summary)

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
