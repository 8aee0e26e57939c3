"""Hydra callbacks: the end-of-sweep report and the sweep's exit status, in one callback; and
`GuardRunDirs`, which notes a run directory's Hydra files before Hydra rewrites them (a job
refused before it starts puts them back).

    hydra:
      callbacks:
        report:
          _target_: sparse_ft.jobs.hydra_callbacks.ReportOnMultirunEnd
          compare: null          # or "paper"
          exit_on_failure: true  # after the report: exit 1 when any job did not complete

After every multirun it writes results.csv, report.md and the plots into the sweep dir and
logs an error line naming every job whose status is not "completed", or that was refused before
it started in a directory it left as it was (`self.failed` keeps them).

Why one callback: Hydra calls on_multirun_end in REVERSE order of declaration, so a separate
exit-status callback declared after the report ran first and its SystemExit skipped the report
of exactly the sweeps that needed it. Here the exit comes only after the report is written.
Nothing but that deliberate SystemExit leaves this module: a broken report must not hide the
sweep's own result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from sparse_ft.report import NoRunsError, failed_runs, generate_report

log = logging.getLogger(__name__)

__all__ = ["GuardRunDirs", "ReportOnMultirunEnd", "SweepExitStatus", "failed_runs"]


class GuardRunDirs(Callback):
    """Notes what a run directory holds before Hydra writes `.hydra/` into it (on_run_start; for a
    multirun, every job directory already under the sweep directory), so a job refused before it
    starts (a completed run relaunched, a directory in use, a resume with other settings, a config
    error) leaves it exactly as it was, or removes it when this launch created it
    (sparse_ft/jobs/rundir.py). Never raises: the job's own checks still run without it."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        try:
            from sparse_ft.jobs.rundir import snapshot

            snapshot(str(config.hydra.run.dir))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not note the run directory's files before Hydra writes them: %s", exc)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            from sparse_ft.jobs.rundir import REFUSED, snapshot

            sweep_dir = Path(str(config.hydra.sweep.dir))
            for path in [p for p in REFUSED if Path(p).is_relative_to(sweep_dir.resolve())]:
                del REFUSED[path]  # an earlier sweep over this directory in this process
            for job_dir in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
                if job_dir.is_dir():
                    snapshot(job_dir)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not note the job directories' files before Hydra writes them: %s", exc)


class ReportOnMultirunEnd(Callback):
    def __init__(self, compare: str | None = None, plots: bool = True, out: str | None = None,
                 exit_on_failure: bool = False) -> None:
        self.compare = compare
        self.plots = plots
        self.out = out
        self.exit_on_failure = exit_on_failure
        self.failed: list[Path] = []
        self.report_dir: Path | None = None

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self.failed = []
        self.report_dir = None
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
        except Exception as exc:  # noqa: BLE001 - a callback must not raise
            log.error("report: cannot read hydra.sweep.dir from the config: %s", exc)
            return
        self._write_report(sweep_dir)
        self.failed = self._failed(sweep_dir)
        self.failed += [p for p in self._refused(sweep_dir) if p not in self.failed]
        if self.failed:
            log.error("%d run(s) in %s did not complete: %s", len(self.failed), sweep_dir,
                      ", ".join(str(p) for p in self.failed))
            if self.exit_on_failure:
                raise SystemExit(1)

    def _write_report(self, sweep_dir: Path) -> None:
        try:
            result = generate_report([sweep_dir], out=self.out, compare=self.compare, plots=self.plots)
        except NoRunsError as exc:
            log.warning("report: %s", exc)
            return
        except Exception:  # noqa: BLE001
            log.exception("report: failed to write the report for %s", sweep_dir)
            return
        self.report_dir = result.out_dir
        log.info("report: %d run(s) -> %s (%s)", len(result.runs), result.out_dir,
                 ", ".join(f.name for f in result.files))

    @staticmethod
    def _refused(sweep_dir: Path) -> list[Path]:
        """Jobs of this sweep refused before they started in a directory they left as it was (a
        resumed sweep with other settings, a directory in use): no summary says so, this does."""
        from sparse_ft.jobs.rundir import REFUSED

        root = sweep_dir.resolve()
        return [Path(p) for p in sorted(REFUSED) if Path(p).is_relative_to(root)]

    @staticmethod
    def _failed(sweep_dir: Path) -> list[Path]:
        # read again rather than from the report: the statuses must count even when the report broke
        try:
            return failed_runs(sweep_dir) if sweep_dir.exists() else []
        except Exception:  # noqa: BLE001
            log.exception("report: could not read the run statuses under %s", sweep_dir)
            return []


class SweepExitStatus(ReportOnMultirunEnd):
    """Kept for configs that name it: the report, then exit 1 when any job did not complete.
    Declaring it beside ReportOnMultirunEnd is harmless (whichever runs first writes the
    report before any exit), but one ReportOnMultirunEnd(exit_on_failure=true) is enough."""

    def __init__(self, compare: str | None = None, plots: bool = True, out: str | None = None,
                 exit_on_failure: bool = True) -> None:
        super().__init__(compare=compare, plots=plots, out=out, exit_on_failure=exit_on_failure)
