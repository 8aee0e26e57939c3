"""Trainer callbacks: what attaches to the training loop without being a method.

A callback is an `EventHandler` (core/events.py): it receives the loop's events through the same
declared methods a method does (the trainer fires each event on the method first, then on every
callback in list order) and knows no method by name. `TrainerCallback` adds the few questions the
trainer asks its callbacks besides events (all declared here, with defaults that mean "nothing"):
its checkpoint state, extra checkpoint files, an earlier resumable point, the weights an
evaluation sees, figures for eval records, whether it takes over a re-selection, and its
summary.json blocks.

Which callbacks a run has is decided by config through `registry.REGISTRY` (built-in callbacks,
each with the keys that enable it) plus the user's own list, `trainer.callbacks`:

    name                 enabled by                          does
    local_sgd            distributed.mode=local_sgd          FISH §4.2 sync rounds (train/local_sgd.py)
    sparse_checkpoints   trainer.sparse_checkpoints=true     FISH §4.3 base + deltas (callbacks/sparse_checkpoints.py)
    (user)               trainer.callbacks=[{_target_: ...}] anything (Hydra instantiate)
    nan_check            always                              a non-finite loss fails the run (TrainingDiverged)
    periodic_checkpoint  trainer.checkpoint_every != 0       checkpoints/last every N steps or minutes
    best_checkpoint      trainer.select_best=true            keeps and restores the best evaluation's weights (train/best.py)
    early_stopping       always (trainer.early_stopping_patience; 0 counts only)  summary.json early_stopping
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from ...core.events import EventHandler


class TrainerCallback(EventHandler):
    """A callback: the events of `EventHandler` plus the trainer's questions below."""

    state_key: ClassVar[str | None] = None  # its state's key in trainer_state.pt (None: the class name)

    # --- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict | None:
        """What checkpoints/last keeps of this callback (None: nothing)."""
        return None

    def load_state_dict(self, state) -> None:
        """A resume hands back what `state_dict` returned (called only when the checkpoint has it)."""

    def checkpoint_files(self, trainer, copy: bool) -> dict[str, Callable[[], dict | None]]:
        """Extra safetensors files of checkpoints/last: name -> a function giving the tensors when
        the checkpoint is written (None: no file). `copy`: the position is kept in memory for later."""
        return {}

    def load_checkpoint_files(self, tensors: dict[str, dict]) -> None:
        """A resume hands over every safetensors file of the checkpoint, by name."""

    def resume_point(self, trainer) -> dict | None:
        """An earlier `trainer.position(copy=True)` a checkpoint should hold instead of the current
        one (local SGD: its last sync round); None: the current position."""
        return None

    # --- selection and evaluation ----------------------------------------------------------
    def takes_selection(self, trainer) -> bool:
        """At an epoch boundary: does this callback re-select what trains itself (instead of the
        method's refresh schedule)? It then calls `trainer.refresh_mask()`."""
        return False

    def eval_view(self, trainer):
        """The weights an evaluation sees (a context manager)."""
        return contextlib.nullcontext()

    def eval_record(self) -> dict:
        """Extra figures for every eval record in metrics.jsonl."""
        return {}

    # --- the job ----------------------------------------------------------------------------
    def summary_blocks(self, trainer) -> dict:
        """summary.json blocks (a dict block is merged into the job's block of that name)."""
        return {}

    def finish(self, run_dir: Path) -> None:
        """The job is over and rank 0 wrote its artifacts (e.g. a figure from metrics.jsonl)."""


def callback_key(callback: TrainerCallback) -> str:
    """The name a trainer callback's state has in a checkpoint (`state_key`, else its class)."""
    return callback.state_key or type(callback).__name__


# --- which callbacks a run has ----------------------------------------------------------------


@dataclass(frozen=True)
class CallbackSetup:
    """What a callback is built from (the job's config groups and the run's objects)."""

    trainer_cfg: Any
    distributed_cfg: Any = None
    dist_info: Any = None
    module: Any = None  # the module that trains (after Method.wrap)
    run_dir: Path | None = None
    checkpoint_dir: Path | None = None
    resumed: bool = False


def build_user_callbacks(specs) -> list[TrainerCallback]:
    """`trainer.callbacks`: a list of `{_target_: module.Class, ...}` entries (Hydra instantiate)."""
    if not specs:
        return []
    from hydra.utils import instantiate

    return [instantiate(spec) for spec in specs]
