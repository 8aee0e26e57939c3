"""A real `python run.py -m` sweep with one failing job: the report is written (the failure
listed in it) and the sweep still exits non-zero.

Hydra calls on_multirun_end callbacks in reverse order of declaration; an exit-status callback
that ran before the report used to leave exactly these sweeps without a report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from test_report import sweep  # noqa: F401  (fixture: 8 completed runs, 1 failed, 1 unfinished)

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=256", "task.max_eval_samples=32",
        "trainer.batch_size=8", "energy=off", "trainer.progress=false", "trainer.log_every=1"]


@pytest.mark.slow
def test_failing_job_still_gets_a_report_and_a_nonzero_exit(tmp_path: Path) -> None:
    proc = run_cli(["-m", "method=dense", *TINY, "trainer.max_steps=2", "trainer.max_grad_norm=0",
                    "trainer.lr=1e-4,1e9,5e-5"], tmp_path)
    assert proc.returncode != 0, proc.stderr[-3000:]

    (report,) = list((tmp_path / "multirun").rglob("report.md"))
    sweep = report.parent
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(s["status"] for s in summaries.values()) == ["completed", "completed", "failed"]
    failed_job = next(name for name, s in summaries.items() if s["status"] == "failed")

    md = report.read_text()
    problems = md.split("## Failed, interrupted and unfinished runs")[1].split("## Plots")[0]
    assert "1 run(s) did not complete" in problems
    assert str(sweep / failed_job) in problems and "TrainingDiverged" in problems
    # the two good jobs are averaged (one selected lr, its one seed) and the failed one is not
    assert "± — (1)" in md.split("## Failed")[0]
    assert (sweep / "results.csv").is_file()
    assert "did not complete" in proc.stdout + proc.stderr


def test_exit_comes_after_the_report(sweep: Path) -> None:
    """exit_on_failure: the report first, then SystemExit(1); SweepExitStatus (kept for configs
    that name it) does the same, so whichever Hydra calls first, the report exists."""
    from omegaconf import OmegaConf

    from sparse_ft.jobs.hydra_callbacks import ReportOnMultirunEnd, SweepExitStatus

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    for callback in (ReportOnMultirunEnd(exit_on_failure=True), SweepExitStatus()):
        (sweep / "report.md").unlink(missing_ok=True)
        with pytest.raises(SystemExit) as exc:
            callback.on_multirun_end(cfg)
        assert exc.value.code == 1
        assert "CUDA out of memory in step 7" in (sweep / "report.md").read_text()
        assert callback.failed == [sweep / "8", sweep / "9"]
    ReportOnMultirunEnd().on_multirun_end(cfg)  # default: report only, never raises
