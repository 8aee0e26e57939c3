"""Stop signals outside the training step loop (issue 19, item 7): in every phase a SIGTERM or
SIGINT ends the job promptly with `status: interrupted`, a log line that says what happened and
exit code 128 + signal, and what can resume resumes. A real `python run.py` is stopped while
the test hook SPARSE_FT_TEST_PHASE_DELAY holds it inside the phase under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_inprocess

# one thread: the CLI run and the in-process resume (faster than a second CLI start) compute alike
TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16", "trainer.num_threads=1",
        "trainer.batch_size=8", "energy=off", "trainer.progress=false", "trainer.log_every=1", "trainer.checkpoint_every=0"]
HOOK_LINE = "SPARSE_FT_TEST_PHASE_DELAY: sleeping"


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]


def _default_stop_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def stop_in_phase(tmp_path: Path, run: Path, args: list[str], delay: str, signum: int = signal.SIGTERM) -> subprocess.CompletedProcess:
    """Start `run.py`, wait until the hook sleeps in phase `delay`, send `signum`; returns the
    finished process."""
    cmd = [sys.executable, str(REPO / "run.py"), f"output_root={tmp_path}", f"hydra.run.dir={run}", *args]
    env = {**os.environ, "SPARSE_FT_TEST_PHASE_DELAY": delay, "PYTHONFAULTHANDLER": "1"}
    # the job starts with the stop signals at their defaults: a suite launched in the background by a
    # shell without job control (`setsid nohup pytest … &`) inherits SIGINT ignored, and the job keeps
    # an ignored signal ignored on purpose (train/preemption.py), so the run would sleep on
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_default_stop_signals)
    log = run / "run.log"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and HOOK_LINE in log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the hook held it in {delay}: {proc.communicate()[1][-3000:]}"
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=150)  # the hook would hold it for 300 s: stopping must cut that short
    except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"run.py did not stop within 150 s of {signal.Signals(signum).name}; its threads at SIGABRT:\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_log(run: Path) -> str:
    return (run / "run.log").read_text()


@pytest.mark.slow
def test_sigterm_in_the_fisher_mask_pass_stops_at_once_and_a_resume_starts_over(tmp_path):
    args = [*TINY, "method=fish", "method.num_samples=32", "trainer.max_steps=3"]
    run = tmp_path / "run"
    proc = stop_in_phase(tmp_path, run, args, "mask:300")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    s = summary(run)
    assert s["status"] == "interrupted"
    assert s["error"] == "SIGTERM received during the mask pass (phase mask): stopped at once"
    text = run_log(run)
    assert "SIGTERM received during the mask pass (phase mask): stopped at once; no checkpoint was written: a resume starts the run over; exit 143" in text
    assert "finishing this" not in text and "checkpointing" not in text  # no step was running
    assert not (run / "checkpoints/last").exists()

    s = run_inprocess(run, args)  # the re-launch (resume=auto)
    assert s["status"] == "completed" and "resumed_from" not in s  # started over: the mask pass ran again
    assert s["method_report"]["k"] > 0
    assert [r["step"] for r in records(run) if r["type"] == "train"] == [1, 2, 3]


@pytest.mark.slow
def test_sigterm_in_the_evaluation_after_the_last_step_checkpoints_and_the_resume_only_evaluates(tmp_path):
    # 8 steps an epoch, 3 steps: the trainer's evaluation after its loop is the run's first (#1)
    args = [*TINY, "method=dense", "trainer.max_steps=3", "trainer.lr=1e-3"]
    f = run_inprocess(tmp_path / "full", args)

    run = tmp_path / "cut"
    proc = stop_in_phase(tmp_path, run, args, "eval#1:300")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    s = summary(run)
    assert s["status"] == "interrupted"
    assert s["error"] == ("SIGTERM received during evaluation (phase eval): stopped at once, "
                          "after writing checkpoints/last at optimizer step 3, the last of its training steps")
    text = run_log(run)
    assert "a resume loads that checkpoint and evaluates again; exit 143" in text
    assert "finishing this" not in text
    assert json.loads((run / "checkpoints/last/manifest.json").read_text())["step"] == 3
    assert not (run / "checkpoints/final").exists()
    assert not [r for r in records(run) if r["type"] in ("eval", "final")]  # nothing of the cut evaluation is recorded

    s = run_inprocess(run, args)  # the re-launch (resume=auto)
    assert s["status"] == "completed" and s["resumed_from"]["step"] == 3
    assert s["metrics"] == f["metrics"] and s["best"] == f["best"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
    assert strip(records(run)) == strip(records(tmp_path / "full"))  # no duplicated or missing record


@pytest.mark.slow
def test_sigterm_in_the_last_steps_evaluation_checkpoints_and_exits_instead_of_completing(tmp_path):
    # 8 steps an epoch, 8 steps: the epoch-end evaluation belongs to the last step (inside the
    # step loop, so it finishes first); the signal came after that step's stop check
    run = tmp_path / "run"
    proc = stop_in_phase(tmp_path, run, [*TINY, "method=dense", "trainer.max_steps=8"], "eval#1:4")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    s = summary(run)
    assert s["status"] == "interrupted" and "metrics" not in s
    assert s["error"] == "SIGTERM received: stopped after optimizer step 8 with a checkpoint"
    assert "SIGTERM received during training: finishing this optimizer step (and the evaluation or epoch end due after it)" in run_log(run)
    assert json.loads((run / "checkpoints/last/manifest.json").read_text())["step"] == 8
    assert [r["step"] for r in records(run) if r["type"] == "eval"] == [8]


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_stops_it_and_names_the_checkpoint_a_resume_continues_from(tmp_path):
    # eval #1: the trainer's after its last step; #2: the job's final evaluation. A periodic
    # checkpoint at step 2 (none at the last step: the run was about to finish)
    args = [*TINY, "method=dense", "trainer.max_steps=3", "trainer.checkpoint_every=2"]
    run = tmp_path / "run"
    proc = stop_in_phase(tmp_path, run, args, "eval#2:300")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    s = summary(run)
    assert s["status"] == "interrupted" and "metrics" not in s
    assert s["error"] == "SIGTERM received during evaluation (phase eval): stopped at once"
    text = run_log(run)
    last = run / "checkpoints/last"
    assert f"SIGTERM received during evaluation (phase eval): stopped at once; a resume continues from {last} (optimizer step 2); exit 143" in text
    assert "finishing this" not in text
    assert json.loads((last / "manifest.json").read_text())["step"] == 2 and not (run / "checkpoints/final").exists()
    assert not [r for r in records(run) if r["type"] == "final"]


def test_sigint_while_loading_data_and_model_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = stop_in_phase(tmp_path, run, [*TINY, "method=dense", "trainer.max_steps=3"], "setup:300", signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    s = summary(run)
    assert s["status"] == "interrupted"
    assert s["error"] == "SIGINT received during data and model loading (phase setup): stopped at once"
    assert "exit 130" in run_log(run)


def _signal_once_in(phase: str, signum: int = signal.SIGTERM):
    """A thread that sends this process `signum` once the job's guard is inside `phase`;
    `.stop` (an Event) ends it if that never happens."""
    import threading

    from sparse_ft.train.preemption import SignalGuard

    stop = threading.Event()

    def watch():
        while not stop.is_set():
            guard = SignalGuard.active
            if guard is not None and phase in guard.phases:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.stop = stop
    thread.start()
    return thread


@pytest.mark.parametrize("job, phase, what", [
    (["job=evaluate"], "inference", "the inference measurement (phase inference)"),
    (["job=compress", "method=bitq"], "compress", "compression (phase compress)"),
])
def test_evaluate_and_compress_jobs_stop_on_sigterm_in_every_phase(tmp_path, monkeypatch, job, phase, what):
    source = tmp_path / "source"
    # a job over a run directory takes the run's trainer settings: the source measures inference
    assert run_inprocess(source, [*TINY, "method=dense", "trainer.max_steps=2", "trainer.measure_inference=true",
                                  "trainer.inference_examples=4"])["status"] == "completed"
    monkeypatch.setenv("SPARSE_FT_TEST_PHASE_DELAY", f"{phase}:300")
    run = tmp_path / "job"
    thread = _signal_once_in(phase)
    try:
        with pytest.raises(SystemExit) as stop:  # long before the hook's 300 s are over
            run_inprocess(run, [*job, f"source={source}", "energy=off"])
    finally:
        thread.stop.set()
    assert stop.value.code == 128 + signal.SIGTERM
    s = summary(run)
    assert s["status"] == "interrupted"
    assert s["error"] == f"SIGTERM received during {what}: stopped at once"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the guard handed the signal back


def test_guard_owns_stop_signals_but_leaves_launchers_and_ignored_ones_alone():
    """One owner per process: the guard raises Terminated outside the step loop, the watcher
    defers inside it and never hands a signal back to the guard, a launcher's handler (submitit's
    SIGUSR2) and an ignored signal stay theirs, and everything is handed back afterwards."""
    from sparse_ft.train.preemption import PreemptionWatcher, SignalGuard, Terminated, critical

    seen = []
    launcher = lambda signum, frame: seen.append(signum)  # noqa: E731
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    signal.signal(signal.SIGUSR2, launcher)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    guard = SignalGuard(True, ["SIGUSR1", "USR2", "SIGNOPE"])
    try:
        guard.install()
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
        with guard.phase("setup"):
            os.kill(os.getpid(), signal.SIGUSR2)  # the launcher's handler runs; the guard notes it
            time.sleep(0.05)
        assert seen == [signal.SIGUSR2] and guard.launcher_signal == (signal.SIGUSR2, "during data and model loading (phase setup)")
        seen.clear()
        assert signal.getsignal(signal.SIGTERM) == guard._handle
        with pytest.raises(Terminated) as stop, guard.phase("mask"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises out of the sleep
        assert str(stop.value) == "SIGTERM received during the mask pass (phase mask): stopped at once"
        assert stop.value.exit_code == 143
        with pytest.raises(Terminated):  # an `except Exception` fallback (a library's) cannot swallow it
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            except Exception:  # noqa: BLE001
                pass

        with PreemptionWatcher(["SIGTERM"]) as watcher:  # the step loop: noted, the step finishes
            os.kill(os.getpid(), signal.SIGTERM)
            assert watcher.received == signal.SIGTERM
            watcher.chain()  # the guard is no launcher: nothing raised
            with pytest.raises(Terminated, match="received twice during training"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        assert signal.getsignal(signal.SIGTERM) == guard._handle

        with pytest.raises(Terminated, match="received after phase mask: stopped at once"):
            with critical("recording this evaluation"):  # held to its end, then stopped
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                seen.append("finished")
        assert seen == ["finished"]
        guard.closing()  # the job ends: only noted
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.received == signal.SIGTERM
    finally:
        guard.restore()
        assert signal.getsignal(signal.SIGUSR2) is launcher
        for s, handler in before.items():
            signal.signal(s, handler)
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM] and SignalGuard.active is None


def test_a_launchers_handler_that_ends_the_job_leaves_an_interrupted_summary(tmp_path, monkeypatch):
    """submitit's SIGUSR2 handler requeues the job and calls sys.exit(-1): the summary must say
    interrupted (it used to say failed, with no error)."""
    def requeue(signum, frame):
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)
    monkeypatch.setenv("SPARSE_FT_TEST_PHASE_DELAY", "setup:300")
    thread = _signal_once_in("setup", signal.SIGUSR2)
    try:
        with pytest.raises(SystemExit) as stop:
            run_inprocess(tmp_path, [*TINY, "method=dense", "trainer.max_steps=2"])
        assert stop.value.code == -1
        s = summary(tmp_path)
        assert s["status"] == "interrupted"
        assert s["error"] == "SIGUSR2 received during data and model loading (phase setup): the launcher's handler ended the job (exit -1)"
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        thread.stop.set()
        signal.signal(signal.SIGUSR2, previous)


def test_omp_pruning_pass_stops_on_sigterm(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_FT_TEST_PHASE_DELAY", "mask:300")
    thread = _signal_once_in("mask")
    try:
        with pytest.raises(SystemExit) as stop:  # long before the hook's 300 s are over
            run_inprocess(tmp_path, [*TINY, "method=omp", "trainer.max_steps=2"])
    finally:
        thread.stop.set()
    assert stop.value.code == 128 + signal.SIGTERM
    s = summary(tmp_path)
    assert s["status"] == "interrupted"
    assert s["error"] == "SIGTERM received during the mask pass (phase mask): stopped at once"


@pytest.mark.parametrize("names, ok", [(["SIGTERM", "USR1"], True), (["SIG_IGN"], False), (["SIGNOPE"], False)])
def test_preempt_signals_must_be_signals(names, ok):
    """SIG_IGN / SIG_DFL are handler constants: once accepted, SIG_IGN (= 1) made the trainer take over SIGHUP."""
    from conftest import compose

    from sparse_ft.config.validation import validate
    from sparse_ft.core.errors import ConfigError

    cfg = compose([f"trainer.preempt_signals=[{','.join(names)}]"])
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=r"^trainer.preempt_signals: .* is not a signal name"):
            validate(cfg)
