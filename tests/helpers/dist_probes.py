"""Trainer callbacks the distributed tests load through `+trainer.callbacks=[...]` (Hydra
instantiate) into torchrun workers: they live with the tests, not in the library."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from sparse_ft.train.callbacks import TrainerCallback

log = logging.getLogger("sparse_ft.tests")


class DumpState(TrainerCallback):
    """Every rank writes <out>/<tag>_rank<r>.pt (weights, selection, epoch-0 shard, step) when the
    local-SGD warm-up ends (the first selection) and when training ends."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.selections = 0

    def _dump(self, tag: str, trainer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state": {k: v.detach().to("cpu", copy=True) for k, v in trainer.bundle.module.state_dict().items()},
                "mask": trainer.method.mask_state(),
                "shard": list(trainer.train_loader(0).sampler),
                "step": trainer.state.step,
            },
            self.out / f"{tag}_rank{trainer.dist.rank}.pt",
        )

    def after_refresh(self, trainer, changed: bool) -> None:
        self.selections += 1
        if self.selections == 1:
            self._dump("warmup_end", trainer)

    def on_fit_end(self, trainer) -> None:
        self._dump("end", trainer)


class ExitAt(TrainerCallback):
    """Rank `rank` dies (os._exit(1)) after `step` optimizer steps: a dead worker must fail the job."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step, self.done = int(rank), int(step), 0

    def on_step_end(self, trainer) -> None:
        self.done += 1
        if trainer.dist.rank == self.rank and self.done == self.step:
            log.error("rank %d exits now (test probe after %d steps)", self.rank, self.done)
            os._exit(1)


class RaiseAt(TrainerCallback):
    """Rank `rank` raises a RuntimeError after `step` optimizer steps (a worker that fails with an
    error, as opposed to ExitAt's hard exit): rank 0's summary must carry that error."""

    def __init__(self, rank: int, step: int):
        self.rank, self.step = int(rank), int(step)

    def on_step_end(self, trainer) -> None:
        if trainer.dist.rank == self.rank and trainer.state.step + 1 == self.step:
            raise RuntimeError(f"probe: rank {self.rank} fails at optimizer step {self.step}")


class SignalAt(TrainerCallback):
    """Every rank sends itself `signal` after optimizer step `step` (what SLURM does to every task
    of a pre-empted job step); `once`: a file that, once written, disarms the probe (a resumed run
    passes the same step again)."""

    def __init__(self, step: int, once: str, signal: str = "SIGTERM"):
        self.step, self.once, self.signal = int(step), Path(once), signal

    def on_step_end(self, trainer) -> None:
        import signal as _signal

        if trainer.state.step + 1 == self.step and not self.once.exists():
            if trainer.dist.is_main:
                self.once.parent.mkdir(parents=True, exist_ok=True)
                self.once.write_text(str(self.step))
            log.warning("rank %d sends itself %s after step %d (test probe)", trainer.dist.rank, self.signal, self.step)
            os.kill(os.getpid(), getattr(_signal, self.signal))
