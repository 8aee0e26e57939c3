"""Hydra callbacks.

Enable the end-of-sweep report in a config (e.g. conf/hydra/*.yaml or a sweep file):

    hydra:
      callbacks:
        report:
          _target_: sparse_ft.callbacks.ReportOnMultirunEnd
          compare: null      # or "paper"

After every multirun it writes results.csv, report.md and the plots into the sweep dir and
logs an error line naming every job whose status is not "completed" (`self.failed` keeps them,
and `failed_runs(sweep_dir)` gives the same list to whoever sets the sweep's exit code).
A callback must never break the sweep it reports on, so nothing here raises.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sparse_ft.report import NoRunsError, failed_runs, generate_report

log = logging.getLogger(__name__)

__all__ = ["ReportOnMultirunEnd", "failed_runs"]


class ReportOnMultirunEnd(Callback):
    def __init__(self, compare: str | None = None, plots: bool = True, out: str | None = None) -> None:
        self.compare = compare
        self.plots = plots
        self.out = out
        self.failed: list[Path] = []
        self.report_dir: Path | None = None

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self.failed = []
        self.report_dir = None
        result = None
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as exc:  # noqa: BLE001 - a callback must not raise
            log.error("report: cannot read hydra.sweep.dir from the config: %s", exc)
            return
        try:
            result = generate_report([sweep_dir], out=self.out, compare=self.compare, plots=self.plots)
            self.report_dir = result.out_dir
            log.info("report: %d run(s) -> %s (%s)", len(result.runs), result.out_dir,
                     ", ".join(f.name for f in result.files))
        except NoRunsError as exc:
            log.warning("report: %s", exc)
        except Exception:  # noqa: BLE001
            log.exception("report: failed to write the report for %s", sweep_dir)
        try:
            self.failed = result.failed if self.report_dir is not None else failed_runs(sweep_dir)
        except Exception:  # noqa: BLE001
            log.exception("report: could not read the run statuses under %s", sweep_dir)
            return
        if self.failed:
            log.error("%d run(s) in %s did not complete: %s", len(self.failed), sweep_dir,
                      ", ".join(str(p) for p in self.failed))


class SweepExitStatus(Callback):
    """Makes a sweep's exit status tell the truth: jobs record their own failure (summary.json,
    run.log) and let the sweep go on; at the end the process exits 1 if any job did not complete."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            bad = failed_runs(sweep_dir) if sweep_dir.exists() else []
        except NoRunsError:
            return
        except Exception as err:  # the report side must never hide the sweep's own result
            log.error("could not check the sweep's jobs: %s", err)
            return
        if bad:
            log.error("%d job(s) did not complete: %s", len(bad), ", ".join(str(p) for p in bad))
            raise SystemExit(1)
