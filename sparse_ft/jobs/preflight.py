"""The pre-flight of every job (`RunContext.execute` calls it first) and where a launch puts its
run directory. Rank 0 locks the run directory (rundir.RunDirLock), every rank validates the
config and checks a completed run's and a resumed checkpoint's settings (resume.py); a job
refused there exits 2 and leaves the directory as it found it (removed when this launch made it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from ..train.preemption import Terminated

log = logging.getLogger("sparse_ft.jobs.entry")


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


def leave_unrun(run, run_dir: Path, created) -> None:
    """A job that will not run here: release the lock without touching the directory's records
    (rank 0 restores what this launch changed; other ranks detach from run.log)."""
    from .rundir import detach_run_log, leave_as_found

    if run.lock is not None:
        run.lock.forget()
        run.lock = None
    if run.is_main:
        leave_as_found(run_dir, created, hydra_launch=hydra_launched())
    else:
        detach_run_log(run_dir)


def preflight(run, validate: Callable[[DictConfig], None], user_errors: tuple) -> tuple[bool, float | None]:
    """Before anything is written to the run directory of `run` (the job's RunContext, whose
    lock, resolved_config, resume and preflight_error this sets): lock it (rank 0), validate
    the config, check a completed run's and a resumed checkpoint's settings (every rank decides
    alike).
    Returns (True, result) for a completed run relaunched with its own settings (nothing is
    done). A refusal (bad config, directory in use, other settings) leaves the directory as
    it was (removed when this launch made it) and exits 2 (multirun: the sweep goes on; a
    new job directory of a multirun records the error in its summary.json instead, so the
    sweep's report and exit status name it)."""
    from .resume import check_resume, completed_run, describe as describe_differences, resolved
    from .rundir import RunDirBusy, RunDirLock, detach_run_log, leave_as_found

    cfg, run_dir = run.cfg, run.run_dir
    created = False
    try:
        if run.is_main:
            if not run_dir.exists():
                run_dir.mkdir(parents=True)
                created = True
            lock = RunDirLock(run_dir)
            lock.acquire()  # RunDirBusy: another live process holds it
            run.lock = lock
        validate(cfg)  # before any data or weights are touched
        run.resolved_config = resolved(cfg)
        done = completed_run(cfg, run_dir)
        if done is not None:
            leave_unrun(run, run_dir, created)
            log.info("%s already holds a completed run with these settings: not training again (the directory is left unchanged)", run_dir)
            return True, done
        run.resume = check_resume(cfg, run_dir)
        if run.lock is not None:
            run.lock.note_takeover()
        if run.resume is not None and run.resume["forced"]:
            log.warning("resuming from %s with other settings (trainer.resume_force=true): %s",
                        run.resume["from"], describe_differences(run.resume["differing"]))
        return False, None
    except (*user_errors, RunDirBusy) as err:
        new = created or not run.is_main or not (run_dir / "config.yaml").exists()
        if is_multirun() and new and not isinstance(err, RunDirBusy):
            run.preflight_error = err
            return False, None
        if run.lock is not None:
            run.lock.forget()
            run.lock = None
        what = "left as it was"
        if run.is_main:
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
            run.preflight_error = err
            return False, None
        leave_unrun(run, run_dir, created)  # an existing run (completed, or to be resumed): left as it was
        log.warning("%s; nothing was run, %s left as it was; exit %d", err, run_dir, err.exit_code)
        raise SystemExit(err.exit_code) from err
    except Exception as err:  # noqa: BLE001 - a bug in a check: recorded like any failure
        run.preflight_error = err
        return False, None
