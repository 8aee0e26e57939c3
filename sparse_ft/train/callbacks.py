"""Trainer callbacks: what attaches to the training loop without being a method (local-SGD
communication, sparse checkpoints, a user's own probes via `trainer.callbacks`).

The trainer calls every hook on every callback in list order. Hooks receive the trainer, so a
callback may read its state (`trainer.state`, `trainer.method`, `trainer.bundle`) and use its
helpers; a callback never names a method.
"""

from __future__ import annotations

import contextlib


class TrainerCallback:
    def on_fit_start(self, trainer) -> None:
        """The optimizer exists (and a resumed state is restored); no step taken yet in this fit."""

    def on_step_end(self, trainer) -> None:
        """After an optimizer step and the method's after_step (before `state.step` counts it)."""

    def sync(self, trainer) -> None:
        """Every rank must hold the same weights now (a checkpoint, a selection, the end)."""

    def on_epoch_end(self, trainer, epoch: int, step: int) -> None:
        """After epoch `epoch` ended and was evaluated (weights synced first)."""

    def takes_selection(self, trainer) -> bool:
        """At an epoch boundary: does this callback re-select what trains itself (instead of the
        method's refresh schedule)? It then calls `trainer.refresh_mask()`."""
        return False

    def after_refresh(self, trainer, changed: bool) -> None:
        """The method re-selected what trains (`changed`: the optimizer was rebuilt)."""

    def eval_view(self, trainer):
        """The weights an evaluation sees (a context manager)."""
        return contextlib.nullcontext()

    def eval_record(self) -> dict:
        """Extra figures for every eval record in metrics.jsonl."""
        return {}

    def on_fit_end(self, trainer) -> None:
        """Training of this stage is over (before the best checkpoint is restored)."""


def build_user_callbacks(specs) -> list[TrainerCallback]:
    """`trainer.callbacks`: a list of `{_target_: module.Class, ...}` entries (Hydra instantiate)."""
    if not specs:
        return []
    from hydra.utils import instantiate

    return [instantiate(spec) for spec in specs]
