"""The built-in callbacks that were once branches of the trainer: the NaN check, periodic
checkpoints, best-checkpoint selection (`trainer.select_best`) and early stopping
(`trainer.early_stopping_patience`). Each is built from config by the REGISTRY (callbacks/__init__.py)
and sees the loop only through events and the trainer's public members."""

from __future__ import annotations

import logging
import math
import time

from ...core.errors import ConfigError
from ...core.events import EvalOutcome
from ...methods.base import Schedule
from .. import distributed as D
from ..best import BestWeights, select_best_store
from ..checkpoint import EARLY_STOPPING_START, kept_checkpoint
from ..state import parse_every
from . import CallbackSetup, TrainerCallback

log = logging.getLogger("sparse_ft.train.trainer")  # the log lines tests and users read keep their logger


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def early_stopping_patience(cfg) -> int:
    """`trainer.early_stopping_patience`: 0 = off; N = stop after N evaluations in a row without
    a better validation main metric. Raises ConfigError naming the key for anything else."""
    value = cfg.get("early_stopping_patience", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError("trainer.early_stopping_patience", f"{value!r} must be an integer >= 0 (0 = off; N = stop after N evaluations without improvement)")
    return value


class NanCheck(TrainerCallback):
    """A loss that is not finite fails the run at the step's boundary (every rank agrees), naming
    the step and the checkpoint a resume could start from. The losses of the step's micro-batches
    are in `state.loss_sum` (summed since the last log line, which only a boundary resets), so one
    non-finite loss makes it non-finite."""

    def after_backward(self, trainer) -> None:
        st = trainer.state
        bad = D.any_flag([not math.isfinite(st.loss_sum)], trainer.device)[0]
        if bad:
            raise TrainingDiverged(f"loss is not finite at optimizer step {st.step + 1} (epoch {st.epoch}); {kept_checkpoint(trainer.checkpoint_dir)}")


class PeriodicCheckpoint(TrainerCallback):
    """`trainer.checkpoint_every`: checkpoints/last every N optimizer steps or minutes (all ranks
    agree on a time-based one: the save has a barrier). Not after the last step (the job's end
    follows) and not when a pre-emption is about to checkpoint anyway."""

    def __init__(self, setup: CallbackSetup):
        self.every_steps, self.every_seconds = parse_every(setup.trainer_cfg.get("checkpoint_every", 0))
        self.last_time = time.monotonic()

    def on_fit_start(self, trainer) -> None:
        self.every_steps, self.every_seconds = parse_every(trainer.cfg.get("checkpoint_every", 0))  # the stage's own config
        self.last_time = time.monotonic()

    def _due(self, trainer) -> bool:
        if self.every_steps and trainer.state.step % self.every_steps == 0:
            return True
        if self.every_seconds:
            due = time.monotonic() - self.last_time >= self.every_seconds
            return D.any_flag([due], trainer.device)[0]  # ranks must agree: the save has a barrier
        return False

    def on_step_recorded(self, trainer) -> None:
        if trainer.preempting or trainer.checkpoint_dir is None:
            return
        if self._due(trainer) and trainer.state.step < trainer.total_steps():
            trainer.save_last()
            self.last_time = time.monotonic()


class BestCheckpoint(TrainerCallback):
    """`trainer.select_best`: at every evaluation that is the new best, keep the tensors training
    can have changed (train/best.py, in its own telemetry phase `select_best`) with the method's
    `best_state()`; when the stage ends, restore them unless the last evaluation was the best.
    In checkpoints/last: `best.safetensors` and trainer_state.pt `best_method`."""

    state_key = "best_method"
    FILE = "best.safetensors"

    def __init__(self, setup: CallbackSetup):
        rank = setup.dist_info.rank if setup.dist_info is not None and setup.dist_info.enabled else 0
        path = setup.checkpoint_dir / f".best.rank{rank}.pt" if setup.checkpoint_dir is not None else None
        self.best = BestWeights(select_best_store(setup.trainer_cfg), path)
        self.method_state: dict | None = None  # Method.best_state() taken with the best weights

    def on_fit_start(self, trainer) -> None:
        self.best.begin(trainer.bundle.module)  # what holds its start value now needs no copy (train/best.py)

    def on_eval_end(self, trainer, outcome: EvalOutcome) -> None:
        if not outcome.improved:
            return
        trainer.phases.to("select_best")  # its own telemetry phase: the copy is not training memory
        self.best.keep(trainer.bundle.module)
        self.method_state = trainer.method.best_state() if isinstance(trainer.method, Schedule) else None
        trainer.phases.to("train")

    def after_refresh(self, trainer, changed: bool) -> None:
        if changed and not self.best.empty:  # tensors left out as unchanged may train now: keep them first
            trainer.phases.to("select_best")
            self.best.add_unwritten(trainer.bundle.module)
            trainer.phases.to("train")

    def on_fit_end(self, trainer) -> None:
        st = trainer.state
        if not self.best.empty and st.best_step != st.step:
            log.info("restoring the best checkpoint (step %d, %s=%.4f)", st.best_step, trainer.task.main_metric, st.best_main)
            self.best.restore(trainer.bundle.module)
            if self.method_state is not None:
                trainer.method.load_best_state(self.method_state)
        self.best.clear()
        self.method_state = None

    def state_dict(self) -> dict | None:
        return self.method_state

    def load_state_dict(self, state) -> None:
        self.method_state = state

    def checkpoint_files(self, trainer, copy: bool) -> dict:
        if not copy or self.best.store == "disk":  # on disk it is the current best when the checkpoint is written
            return {self.FILE: self.best.tensors}
        kept = self.best.tensors()
        return {self.FILE: lambda: kept}

    def load_checkpoint_files(self, tensors: dict) -> None:
        self.best.set(tensors.get(self.FILE))


class EarlyStopping(TrainerCallback):
    """`trainer.early_stopping_patience=N`: stop after N evaluations in a row that competed for the
    best without improving it (the READ paper's protocol); 0 only counts. The count is in the
    checkpoint (trainer_state.pt `early_stopping`), so a resumed run stops where an uninterrupted
    one would; summary.json `early_stopping` comes from here."""

    state_key = "early_stopping"

    def __init__(self, setup: CallbackSetup):
        self.patience = early_stopping_patience(setup.trainer_cfg)
        self.evals_without_improvement = 0
        self.stopped_early_at_step: int | None = None
        self._restored = False

    def on_fit_start(self, trainer) -> None:
        self.patience = early_stopping_patience(trainer.cfg)  # the stage's own config
        if not self._restored:  # a new stage starts counting afresh
            self.evals_without_improvement, self.stopped_early_at_step = 0, None
        self._restored = False
        if self.stopped_early_at_step is not None:  # resumed after it stopped: no step is left
            trainer.request_stop()

    def on_eval_end(self, trainer, outcome: EvalOutcome) -> None:
        if not outcome.competed:
            return
        st = trainer.state
        self.evals_without_improvement = 0 if outcome.improved else self.evals_without_improvement + 1
        if self.patience and self.evals_without_improvement >= self.patience and self.stopped_early_at_step is None:
            self.stopped_early_at_step = st.step
            trainer.log_metrics({"type": "early_stop", "stage": st.stage, "step": st.step, "epoch": st.epoch, "patience": self.patience,
                                 "best_step": st.best_step, "best_main": st.best_main})
            log.info("early stopping at step %d: %d evaluations without a better %s (best %.4f at step %d)",
                     st.step, self.evals_without_improvement, trainer.task.main_metric, st.best_main, st.best_step)
            trainer.request_stop()

    def state_dict(self) -> dict:
        return {"evals_without_improvement": self.evals_without_improvement, "stopped_early_at_step": self.stopped_early_at_step}

    def load_state_dict(self, state) -> None:
        state = state or EARLY_STOPPING_START
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.stopped_early_at_step = state.get("stopped_early_at_step")
        self._restored = True

    def summary_blocks(self, trainer) -> dict:
        """summary.json `early_stopping`: the patience and the step training stopped at (null: ran to the end)."""
        return {"early_stopping": {"patience": self.patience, "stopped_early_at_step": self.stopped_early_at_step,
                                   "evals_without_improvement": self.evals_without_improvement, "best_step": trainer.state.best_step}}
