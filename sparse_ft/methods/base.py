"""The method interface: everything method-specific lives behind these few calls.

The trainer calls, in order: `prepare` once, then per optimizer step `after_backward` (gradients
are in `.grad`, before clipping and the optimizer) and `after_step` (after the optimizer), then
`on_epoch_end`, and `finalize` once training and selection are over. It builds its optimizer
over `param_groups()`, so a method decides what the optimizer sees (whole tensors, or a flat
vector of selected entries) and therefore how big its state is.

Optional hooks for methods whose selection changes during training (masked methods under
local-SGD warm-up or a mask refresh schedule); the defaults mean "nothing changes":
`refresh_due(epoch)` asks whether to re-select after that epoch, `refresh_mask()` re-selects and
returns True when `param_groups()` changed (the trainer then rebuilds its optimizer, keeping the
scheduler position), `mask_state()` / `load_mask_state()` carry a selection from rank 0 to the
other ranks, and `sync_to_module()` is called after the trainer overwrote the values of the
optimizer's parameters (a local-SGD sync) so a method holding copies can write them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

from ..config import ConfigError

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight", "bn", "ln_")


@dataclass
class MethodContext:
    """What `prepare` may use besides the model: the training data, the device and the run."""

    run_dir: Path
    device: torch.device
    seed: int
    train_features: object  # the encoded training split (a Dataset)
    collate: Callable
    loss: Callable[[dict], torch.Tensor]  # bundle.loss on a batch already on `device`
    per_example_loss: Callable[[dict], torch.Tensor] | None = None  # shape (B,)
    logits: Callable[[dict], torch.Tensor] | None = None  # shape (B, C); None for text-to-text
    phase: Callable[[str], ContextManager] = None  # telemetry phase, e.g. phase("mask")
    extra: dict = field(default_factory=dict)


class Method:
    name = "base"

    def __init__(self, cfg):
        self.cfg = cfg
        self.module: nn.Module | None = None

    @staticmethod
    def validate(cfg) -> None:
        """Cheap checks of `method.*` before anything loads; raise ConfigError naming the key."""

    # --- training hooks --------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext) -> None:
        self.module = module

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self.module.named_parameters(), weight_decay)

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the task loss before backward (e.g. an L0 penalty); None = none."""
        return None

    def after_backward(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def refresh_due(self, epoch: int) -> bool:
        """After epoch `epoch` (0-based) ends: should `refresh_mask` run?"""
        return False

    def refresh_mask(self) -> bool:
        """Re-select what trains from the current weights; True when `param_groups()` changed."""
        return False

    def mask_state(self) -> dict | None:
        """The current selection, to broadcast from rank 0 (None: nothing to share)."""
        return None

    def load_mask_state(self, state: dict | None) -> None:
        """Adopt rank 0's selection (the counterpart of `mask_state`)."""

    def sync_to_module(self) -> None:
        """The optimizer's parameters were overwritten from outside (local-SGD sync): propagate."""

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        """Post-training work (materialise, write deltas); returns `storage` entries."""
        return {}

    # --- bookkeeping -----------------------------------------------------------------------
    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def report(self) -> dict:
        return {}


def decay_groups(named_params, weight_decay: float) -> list[dict]:
    """Hugging Face's convention: no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if any(t in name for t in NO_DECAY) or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def check_fraction(cfg, key: str, low_open: bool = True) -> None:
    value = cfg.get(key)
    if value is None:
        return
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        raise ConfigError(f"method.{key}", f"{value!r} must be in {'(0, 1]' if low_open else '[0, 1]'}")
