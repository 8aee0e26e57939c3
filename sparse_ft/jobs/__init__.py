"""The three kinds of job a run can be (`job=train|evaluate|compress`), each a body run inside one
RunContext (run dir, telemetry, summary, loggers)."""

from __future__ import annotations

from ..config.effective import JOBS
from ..core.errors import ConfigError


def job_body(name: str):
    if name == "train":
        from .train import train_job

        return train_job
    if name == "evaluate":
        from .evaluate import evaluate_job

        return evaluate_job
    if name == "compress":
        from .compress import compress_job

        return compress_job
    raise ConfigError("job", f"{name!r} is not one of {', '.join(JOBS)}")
