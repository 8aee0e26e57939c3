"""Stop signals, from the start of a job to its summary. One owner per process:

- `SignalGuard` (installed by the run context, `RunContext.execute`, in every process: plain
  runs, multirun jobs, torchrun ranks) holds SIGTERM, SIGINT and `trainer.preempt_signals` for
  the whole job. Outside the training step loop a signal stops the job at once: the handler
  raises `Terminated`, naming the phase it arrived in (data and model loading, the mask pass,
  evaluation, compression, the inference measurement, ...), and the job ends with
  `status: interrupted` and exit code 128 + signal number. Once the job is ending (an error is
  handled, the summary written) a signal is only noted and cannot cut the summary short.
- Inside the training step loop `PreemptionWatcher` takes the signals over: SLURM sends SIGTERM
  (or the --signal of your choice, e.g. SIGUSR1) before it kills a job, so the handler only
  raises a flag; the trainer finishes the current optimizer step, writes checkpoints/last
  atomically and exits with 128 + signal number so a launcher can requeue it (an evaluation or
  epoch end due after that step runs first: the checkpoint must hold the step whole). A second
  signal stops at once (`Terminated`, no checkpoint). A signal that comes after the last step's
  check (during its evaluation) still checkpoints and exits; one that comes during the
  evaluation after the loop stops it at once and, in a single process, writes checkpoints/last
  first (every step is done; a resume evaluates again).

A launcher's own Python handler keeps its signal outside the step loop (submitit: SIGUSR2 requeues
and exits, SIGTERM is bypassed); the guard only notes that it ran, so a job it ends is recorded as
interrupted. A signal the process ignores (SIG_IGN) stays ignored. Inside the step loop we
still write our checkpoint first, then hand the signal to the launcher's handler (`chain`), so
the requeued job resumes from checkpoints/last instead of the last periodic checkpoint.

Test hook: `SPARSE_FT_TEST_PHASE_DELAY="<phase>[#n]:<seconds>,..."` sleeps that long when the
job enters telemetry phase <phase> (only its n-th entry with `#n`), after logging a line, so a
test can send a signal while a short run is inside that phase."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGINT")  # always the job's, whatever trainer.preempt_signals says
PHASE_DELAY_ENV = "SPARSE_FT_TEST_PHASE_DELAY"
PHASES = {  # telemetry phase -> what the job is doing then (for the log line and summary.json error)
    "setup": "data and model loading (phase setup)",
    "mask": "the mask pass (phase mask)",
    "train": "training (phase train)",
    "eval": "evaluation (phase eval)",
    "compress": "compression (phase compress)",
    "inference": "the inference measurement (phase inference)",
}


def signal_number(name) -> int | None:
    """`SIGTERM`, `TERM` -> its number; None for a name this platform does not have."""
    value = getattr(signal, name if str(name).startswith("SIG") else f"SIG{name}", None)
    return int(value) if isinstance(value, signal.Signals) else None  # not SIG_DFL / SIG_IGN


class Preempted(Exception):
    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"{signal.Signals(signum).name} received: stopped after optimizer step {step} with a checkpoint")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Terminated(BaseException):
    """A stop signal that ended the job at once (outside the training step loop, or asked twice).
    `where` names the phase; the trainer sets `checkpoint_step` when it could still write
    checkpoints/last (a signal during the evaluation that follows the last optimizer step).
    A BaseException, like KeyboardInterrupt: an `except Exception` fallback (ours or a
    library's, e.g. around a dataset download) must not swallow it or report it as an error."""

    def __init__(self, signum: int, where: str = "outside the training loop", distributed: bool = False):
        self.signum, self.where, self.distributed = signum, where, distributed
        self.checkpoint_step: int | None = None
        super().__init__()

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        text = f"{name} received {self.where}: stopped at once"
        if self.checkpoint_step is not None:
            text += f", after writing checkpoints/last at optimizer step {self.checkpoint_step}, the last of its training steps"
        if self.distributed:
            text += " (under torchrun also how the other workers are stopped when one fails)"
        return text

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def phase_delays(spec: str | None) -> dict[tuple[str, int | None], float]:
    """The test hook's `<phase>[#n]:<seconds>,...` -> {(phase, n or None): seconds}."""
    delays = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        try:
            where, seconds = item.rsplit(":", 1)
            name, _, nth = where.partition("#")
            delays[(name, int(nth) if nth else None)] = float(seconds)
        except ValueError:
            log.warning("%s: %r is not <phase>[#n]:<seconds>; ignored", PHASE_DELAY_ENV, item)
    return delays


class SignalGuard:
    """The job's owner of its stop signals (see the module docstring): raises `Terminated` while
    the job runs, except inside `hold` (a short step finishes first); once `closing()` was called
    (error handling, summary writing) a signal is only noted. It also knows the telemetry phase
    the job is in (`phase`), to say where a signal came."""

    active: "SignalGuard | None" = None  # the installed one (one job at a time per process)

    def __init__(self, enabled: bool, names=(), distributed: bool = False):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        numbers = [signal_number(n) for n in (*STOP_SIGNALS, *(names or ()))]
        self.signals = list(dict.fromkeys(n for n in numbers if n is not None))
        self.distributed = distributed
        self.closing_now = False
        self.received: int | None = None
        self.phases: list[str] = []  # open telemetry phases, innermost last
        self.last_phase: str | None = None
        self._entries = collections.Counter()
        self._delays = phase_delays(os.environ.get(PHASE_DELAY_ENV))
        self._previous = {}
        self._critical: str | None = None  # a short step that must not be cut in half (see `critical`)
        self._held: tuple[int, str] | None = None  # a signal that came during it, and where
        self.launcher_signal: tuple[int, str] | None = None  # a signal a launcher's handler took, and where

    def where(self) -> str:
        if self.phases:
            name = self.phases[-1]
            return f"during {PHASES.get(name, f'phase {name}')}"
        if self.last_phase is not None:
            return f"after phase {self.last_phase}"
        return "while the job started (before data loading)"

    def _handle(self, signum, frame):
        self.received = signum
        if self.closing_now:
            log.warning("%s received while the job ends: noted, the summary is written first", signal.Signals(signum).name)
            return
        if self._critical is not None and self._held is None:
            self._held = (signum, self.where())
            log.warning("%s received: finishing %s first, then stopping", signal.Signals(signum).name, self._critical)
            return
        raise Terminated(signum, self.where(), self.distributed)

    _handle.job_guard = True  # PreemptionWatcher.chain() never hands a signal back to the guard

    def install(self) -> None:
        if not self.enabled:
            return
        SignalGuard.active = self
        for s in self.signals:
            current = signal.getsignal(s)
            if current is signal.SIG_IGN:
                continue  # ignored on purpose
            if callable(current) and current is not signal.default_int_handler:
                # a launcher's (submitit: SIGUSR2 requeues and exits, SIGTERM is bypassed): it
                # stays theirs; we only note it, so a job it ends says interrupted, not failed
                self._previous[s] = signal.signal(s, self._launchers(current))
                continue
            self._previous[s] = signal.signal(s, self._handle)

    def _launchers(self, handler):
        def noted(signum, frame):
            self.received = signum
            self.launcher_signal = (signum, self.where())
            return handler(signum, frame)

        return noted

    def closing(self) -> None:
        self.closing_now = True

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        if SignalGuard.active is self:
            SignalGuard.active = None

    @contextlib.contextmanager
    def hold(self, what: str):
        """A short step (recording an evaluation) runs to its end; a signal that came meanwhile
        stops the job right after it."""
        if self._critical is not None:  # nested: the outer one decides
            yield
            return
        self._critical, self._held = what, None
        try:
            yield
        finally:
            held, self._critical, self._held = self._held, None, None
        if held is not None and not self.closing_now:
            raise Terminated(*held, self.distributed)

    @contextlib.contextmanager
    def phase(self, name: str):
        """The job is in telemetry phase `name` (nested phases: the innermost counts)."""
        self.phases.append(name)
        try:
            self._entries[name] += 1
            delay = self._delays.get((name, self._entries[name]), self._delays.get((name, None)))
            if delay:
                log.warning("%s: sleeping %.1f s in phase %s (entry %d)", PHASE_DELAY_ENV, delay, name, self._entries[name])
                time.sleep(delay)
            yield
        finally:
            del self.phases[len(self.phases) - 1 - self.phases[::-1].index(name)]  # phases may close out of order
            self.last_phase = name


def critical(what: str):
    """`SignalGuard.hold` of the job's guard, if one is installed (else nothing to hold)."""
    guard = SignalGuard.active
    return guard.hold(what) if guard is not None else contextlib.nullcontext()


class PreemptionWatcher:
    def __init__(self, names):
        self.signals = list(dict.fromkeys(n for n in (signal_number(n) for n in names) if n is not None))
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now, without the checkpoint
            raise Terminated(signum, "twice during training (phase train)")
        self.received = signum
        log.warning("%s received during training: finishing this optimizer step (and the evaluation or epoch end due after it), "
                    "then checkpointing and exiting (send it again to stop at once, without a checkpoint)", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def chain(self) -> None:
        """Pass the received signal on to the handler we replaced, if that was a launcher's
        Python handler (e.g. submitit's requeue); the default actions and the job's own guard
        (which would only stop the job) are ours to replace."""
        previous = self._previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler and not getattr(previous, "job_guard", False):
            log.info("passing %s on to the launcher's handler", signal.Signals(self.received).name)
            previous(self.received, None)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        return False
