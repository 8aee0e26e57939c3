"""The experiment-tracker interface that `jobs/entry.py` drives, and the no-op tracker (`logger=none`).

A tracker is a mirror of the run directory (metrics.jsonl, summary.json, energy.csv): it is never
the only copy of anything, so it must never take a run down. Every method of a tracker is
best-effort and returns normally.
"""

from __future__ import annotations

from typing import Any

from ..core import nested


class NullLogger:
    """`logger=none`, and what a tracker degrades to when it cannot start."""

    name = "none"

    def log(self, record: dict) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def log_series(self, name: str, rows: list[dict]) -> None:
        pass

    def finish(self, exit_code: int) -> None:
        pass

    @property
    def status(self) -> dict:
        """Block(s) to merge into summary.json (`summary.update(logger.status)`); none here."""
        return {}


def scalar(value: Any) -> Any:
    """A plain Python value for a tracker: numpy/torch scalars unwrapped, bools as ints.

    Returns `None` for what cannot be a logged metric (None, containers, objects)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return None


def flatten(data: dict, prefix: str = "", sep: str = "/") -> dict:
    """`{"a": {"b": 1}}` → `{"a/b": 1}`; keys become strings, non-dict leaves are kept as they are."""
    return nested.flatten(data, prefix, sep, keep_empty=False)

