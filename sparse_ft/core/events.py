"""The training loop's events (MosaicML Composer's model): the trainer fires them, and the method
and every trainer callback receive them through the same declared interface, `EventHandler`,
one method per event, each a no-op by default.

The trainer knows no method and no callback by name: it calls `handler.run_event(event, trainer,
*args)` on the method first, then on each callback in list order. It lives here, below `methods/`
and `train/`, because both build on it (`methods/` never imports `train/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Event(Enum):
    """Every point of the loop a method or a callback can react to; the value is the handler's
    method name (so a user callback keeps the names it always had)."""

    FIT_START = "on_fit_start"  # the optimizer exists, a resumed state is restored; no step taken yet in this fit
    AFTER_BACKWARD = "after_backward"  # an optimizer step's gradients are in `.grad` (before clipping and the optimizer)
    AFTER_STEP = "after_step"  # the optimizer stepped and the gradients were zeroed (before the selection check)
    STEP_END = "on_step_end"  # the step is done (an optimizer rebuilt after a selection change), not yet counted in `state.step`
    STEP_RECORDED = "on_step_recorded"  # the step is counted, logged, evaluated, its epoch closed: a resumable point
    EPOCH_END = "on_epoch_end"  # an epoch ended and was evaluated (every rank holds the same weights); args: epoch, step
    EVAL_END = "on_eval_end"  # an evaluation was recorded (inside its all-or-nothing section); arg: EvalOutcome
    SYNC = "sync"  # every rank must hold the same weights now (a checkpoint, a selection, the end)
    AFTER_REFRESH = "after_refresh"  # what trains was re-selected; arg: changed (the optimizer was rebuilt)
    FIT_END = "on_fit_end"  # this stage's training is over (before the best checkpoint is restored)


@dataclass(frozen=True)
class EvalOutcome:
    """What `Event.EVAL_END` hands over: the metrics per split, whether this evaluation competed
    for the best (a selection split, and the method allows it at this step) and whether it is
    the new best (`state.best_*` already hold it)."""

    results: dict = field(default_factory=dict)
    competed: bool = False
    improved: bool = False


class EventHandler:
    """One declared method per `Event`, all no-ops: a method or a callback overrides the ones it
    needs. `trainer` is the running Trainer (its `state`, `method`, `bundle`, `dist`, public helpers)."""

    def run_event(self, event: Event, trainer, *args) -> None:
        getattr(self, event.value)(trainer, *args)

    def on_fit_start(self, trainer) -> None:
        """Event.FIT_START."""

    def after_backward(self, trainer) -> None:
        """Event.AFTER_BACKWARD (`trainer.state.step`: steps done before this one)."""

    def after_step(self, trainer) -> None:
        """Event.AFTER_STEP (`trainer.state.step`: steps done before this one)."""

    def on_step_end(self, trainer) -> None:
        """Event.STEP_END."""

    def on_step_recorded(self, trainer) -> None:
        """Event.STEP_RECORDED."""

    def on_epoch_end(self, trainer, epoch: int, step: int) -> None:
        """Event.EPOCH_END: epoch `epoch` (0-based) ended after `step` optimizer steps and was evaluated."""

    def on_eval_end(self, trainer, outcome: EvalOutcome) -> None:
        """Event.EVAL_END."""

    def sync(self, trainer) -> None:
        """Event.SYNC."""

    def after_refresh(self, trainer, changed: bool) -> None:
        """Event.AFTER_REFRESH."""

    def on_fit_end(self, trainer) -> None:
        """Event.FIT_END."""
