"""The run directory: `metrics.jsonl` (one JSON object per logged step/eval), `summary.json`,
`config.yaml`, `checkpoints/`, `.lock` (jobs/rundir.py: one process per run directory). Its names
are a public contract (see DESIGN.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..core.io import atomic_write_text, writing


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")


class RunWriter:
    """Writes the run directory; a disabled writer (ranks other than 0) writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.listeners = []  # loggers that get every record too (W&B)
        self._metrics = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    def log_metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        with writing(self.metrics_path):  # a full disk names the file
            self._metrics.write(json.dumps(_jsonable(record)) + "\n")
            self._metrics.flush()
        for listener in self.listeners:
            listener(record)

    def truncate_after(self, step: int, stage: int = 0) -> None:
        """Drop records logged after `step` of `stage` (a resumed run logs them again): no
        duplicated steps. Steps count within a stage, so records compare as (stage, step)."""
        if not self.enabled:
            return
        self._metrics.close()

        def kept(record: dict) -> bool:
            return (record.get("stage", 0), record.get("step", 0)) <= (stage, step)

        keep = [l for l in self.metrics_path.read_text().splitlines() if l.strip() and kept(json.loads(l))]
        atomic_write_text(self.metrics_path, "".join(l + "\n" for l in keep))
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    def write_summary(self, summary: dict) -> Path:
        path = self.run_dir / "summary.json"
        write_json_atomic(path, summary)
        return path

    def close(self) -> None:
        if self._metrics is not None and not self._metrics.closed:
            try:
                self._metrics.close()
            except OSError:  # a record that a full disk refused (the error named metrics.jsonl)
                pass
