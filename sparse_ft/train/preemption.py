"""Pre-emption: SLURM sends SIGTERM (or the --signal of your choice, e.g. SIGUSR1) before it kills a
job. The handler only raises a flag; the trainer finishes the current optimizer step, writes
checkpoints/last atomically and exits with 128 + signal number so a launcher can requeue it.
A second signal of the same kind acts immediately (the default action).

Under submitit (hydra/launcher=submitit_slurm), SIGUSR2 belongs to submitit: it requeues the job
before the time limit. We still write our checkpoint first, then hand the signal to submitit's
handler (`chain`), so the requeued job resumes from checkpoints/last instead of the last
periodic checkpoint."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class Preempted(Exception):
    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"{signal.Signals(signum).name} received: stopped after optimizer step {step} with a checkpoint")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class PreemptionWatcher:
    def __init__(self, names):
        self.signals = [getattr(signal, n if n.startswith("SIG") else f"SIG{n}") for n in names]
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signum
        log.warning("%s received: finishing this step, then checkpointing and exiting", signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def chain(self) -> None:
        """Pass the received signal on to the handler we replaced, if that was a Python handler
        (a launcher's, e.g. submitit's requeue); the default actions are ours to replace."""
        previous = self._previous.get(self.received)
        if callable(previous) and previous is not signal.default_int_handler:
            log.info("passing %s on to the launcher's handler", signal.Signals(self.received).name)
            previous(self.received, None)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        return False
