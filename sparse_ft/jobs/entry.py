"""One run: `run(cfg)` is what `run.py` calls inside `@hydra.main`.

`cfg.job` picks the body (sparse_ft/jobs/): train (default), evaluate or compress. Whatever
happens, the run directory ends with a `summary.json` whose `status` says how the run ended; a run
that has not finished has none. Before anything is written there the job locks the run directory,
validates the config and compares a completed run's or a resumed checkpoint's settings with its
own (jobs/resume.py); a refusal exits 2 and leaves the directory as it found it (jobs/rundir.py).
"""

from __future__ import annotations

from omegaconf import DictConfig

from .context import RunContext, seed_everything  # noqa: F401  (seed_everything: public)


def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main validation metric (what a Hydra sweeper optimises)."""
    from ..config.validation import validate
    from ..config.effective import effective_config
    from . import job_body

    rc = RunContext(cfg)

    def checked(cfg: DictConfig) -> None:
        effective_config(cfg)
        validate(cfg)

    return rc.execute(lambda rc: job_body(cfg.get("job", "train"))(rc), checked)
