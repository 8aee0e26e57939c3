"""The method interface: everything method-specific lives behind these few calls.

`Method` holds what every method needs. The train job calls `wrap(bundle, ctx)` once (a method
may hand back a different bundle: a peft model, a side network over a frozen backbone),
`prepare(module, ctx, resumed)` once (`resumed`: what `state_dict()` wrote into the checkpoint the
run resumes from, the module already holding that checkpoint's weights; None on a fresh run),
then the trainer loop(s); `finalize` once training is over and
`export` for the weights in the base model's layout (final checkpoint, `params.updated`,
storage). The trainer builds its optimizer over `param_groups()`, so a method decides what the
optimizer sees (whole tensors, or a flat vector of selected entries) and how big its state is.

Inside the loop a method receives the trainer's events (core/events.py) through the same declared
`EventHandler` methods a trainer callback does, each a no-op by default; methods use
`after_backward(trainer)` (gradients are in `.grad`, before clipping and the optimizer) and
`after_step(trainer)` (after the optimizer), with `trainer.state.step` the steps done before this
one. `extra_loss()` adds a term to the loss before backward.

Opt-in capabilities (mixins the trainer and the job recognise with `isinstance`, never by name):
- `Staged`: several training stages (`stages`, `begin_stage`, `end_stage`), each with its own
  optimizer and schedule; without it a run has one stage;
- `SelectionChanges`: what trains changes during the run (masked methods under a local-SGD
  warm-up or a refresh schedule, a schedule asking after each step): `selection_changed(step)`,
  `refresh_due(epoch)` / `refresh_mask()` (the trainer then rebuilds its optimizer, keeping the
  scheduler position, and `carry_optimizer_state` moves over what still applies),
  `mask_state()` / `load_mask_state()` (rank 0's selection to the other ranks) and
  `sync_to_module()` (the optimizer's parameters were overwritten from outside: a local-SGD sync);
- `Schedule`: not every evaluation may count as the best (`selectable(step)`), and method state
  belongs with the best weights (`best_state` / `load_best_state`).

Options are a typed dataclass (`Options`, see core/options.py): every key with its help text and
range, checked before anything loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn

from ..core.events import EventHandler
from ..core.options import MethodOptions
from .registry import parse_options

log = logging.getLogger(__name__)

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "layernorm.weight", "norm.weight", "bn", "ln_")


@dataclass(frozen=True)
class MethodContext:
    """What `wrap`, `prepare` and `begin_stage` may use besides the model: the training data, the
    device and the run. Frozen: nothing is re-bound after hand-out. The job hands `wrap` the
    context of the bundle as built, `prepare` a copy (`dataclasses.replace`) whose `bundle`,
    `loss`, `per_example_loss` and `logits` are those of the bundle `wrap` returned, and every
    `begin_stage` a copy whose `total_steps` / `steps_per_epoch` are that stage's."""

    run_dir: Path
    device: torch.device
    seed: int
    train_features: object  # the encoded training split (a Dataset)
    collate: Callable
    loss: Callable[[dict], torch.Tensor]  # bundle.loss on a batch already on `device`
    per_example_loss: Callable[[dict], torch.Tensor] | None = None  # shape (B,)
    logits: Callable[[dict], torch.Tensor] | None = None  # shape (B, C); None for text-to-text
    phase: Callable[[str], ContextManager] = None  # telemetry phase, e.g. phase("mask")
    total_steps: int = 0  # optimizer steps of the run (prepare) or of the stage (begin_stage): schedules need them up front
    steps_per_epoch: int = 0
    model_cfg: Any = None  # the `model:` config group (name, source, architecture)
    bundle: Any = None  # the ModelBundle: as built (wrap), as wrapped (prepare, begin_stage)
    # how the run trains (distributed.*): masked methods compute sampled weight gradients only
    # when DDP does not all-reduce them (one process, or local SGD), and under local SGD with a
    # dense warm-up (`defer_mask`) select their mask when the trainer calls refresh_mask()
    world_size: int = 1  # processes training together (torchrun)
    local_sgd: bool = False  # distributed.mode=local_sgd
    defer_mask: bool = False  # local SGD with distributed.warmup_epochs > 0


@dataclass(frozen=True)
class Stage:
    """One training stage of a run: its own optimizer and schedule (`overrides` of trainer keys)."""

    name: str = "train"
    overrides: dict = field(default_factory=dict)


class Method(EventHandler):
    name = "base"
    kind = "trainer"  # "trainer": runs under job=train; "compressor": under job=compress
    Options: type[MethodOptions] = MethodOptions

    def __init__(self, cfg):
        self.opts = self.parse_options(cfg)
        self.cfg = self.opts  # attribute and .get() access, typed and checked
        self.module: nn.Module | None = None

    @classmethod
    def parse_options(cls, cfg, note: bool = True) -> MethodOptions:
        """`cfg` (the `method:` group) as this method's typed options (see registry.parse_options:
        another registered method's key is dropped with a note, any other unknown key is an error)."""
        return parse_options(cls, cfg, note)

    @classmethod
    def validate(cls, cfg) -> None:
        """Cheap checks of `method.*` before anything loads; raise ConfigError naming the key.
        (Quiet about keys of other methods: the job notes them once, when it builds the method.)"""
        cls.parse_options(cfg, note=False)

    # --- the model and the stages ------------------------------------------------------------
    def wrap(self, bundle, ctx: MethodContext):
        """The bundle that trains (module + loss + predict); default: the model as it is."""
        return bundle

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The trained weights in the base model's layout and names (LoRA merged, masks applied):
        what the final checkpoint holds and what `params.updated` is counted on."""
        return module.state_dict()

    def added_count(self) -> int:
        """Parameters that did not exist in the pretrained model (LoRA's A/B, adapters, side nets)."""
        return 0

    # --- training hooks --------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext, resumed: dict | None = None) -> None:
        """Set up training on `module`. `resumed`: the method's `state_dict()` from the checkpoint
        a resumed run starts from (`module` already holds its weights): reuse it (masks, scores,
        initial values) instead of computing it again from the trained weights; None: a fresh run."""
        self.module = module

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self.module.named_parameters(), weight_decay)

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the task loss before backward (e.g. an L0 penalty); None = none."""
        return None

    def param_bases(self, total: int) -> dict:
        """Extra `summary.json → params` entries (e.g. the trainable fraction on a paper's own
        basis); `total`: the pretrained model's parameter count."""
        return {}

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        """Post-training work (materialise, write deltas); returns `storage` entries."""
        return {}

    # --- bookkeeping -----------------------------------------------------------------------
    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    def state_dict(self) -> dict:
        """What a resume needs besides the module's weights; `prepare` gets it back as `resumed`."""
        return {}

    def report(self) -> dict:
        return {}

    def summary_blocks(self) -> dict:
        """Top-level summary.json blocks the method measures (e.g. `sparsity` of the final
        weights); they never replace a block the job writes."""
        return {}


# --- opt-in capabilities (mixins; see the module docstring) ------------------------------------


class Staged:
    """A method with several training stages, each with its own optimizer and schedule."""

    def stages(self) -> list[Stage]:
        """The run's training stages, in order; each gets its own optimizer and schedule."""
        return [Stage()]

    def begin_stage(self, index: int, stage: Stage, ctx: MethodContext) -> None:
        """Before stage `index` trains (not called again when a run resumes inside that stage)."""

    def end_stage(self, index: int, stage: Stage, result: dict) -> None:
        """After stage `index` trained and was evaluated (`result`: its step count and metrics)."""


def stages_of(method) -> list[Stage]:
    """The method's stages: its own (`Staged`), else the one stage of every run."""
    return method.stages() if isinstance(method, Staged) else [Stage()]


class SelectionChanges:
    """A method whose selection (what the optimizer trains) changes during the run."""

    def selection_changed(self, step: int) -> bool:
        """Asked after every optimizer step: did what trains change (the trainer then compares the
        new `param_groups()` with its optimizer's and rebuilds only if they differ)?"""
        return False

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

    def carry_optimizer_state(self, old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
        """The trainer rebuilt its optimizer after a selection change: move over what still applies
        (default: the state of tensors the new optimizer sees too; a method with flat vectors remaps)."""
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]

    def sync_to_module(self) -> None:
        """The optimizer's parameters were overwritten from outside (local-SGD sync): propagate."""


class Schedule:
    """A method on a schedule: not every evaluation may be the best, and method state belongs with
    the best weights."""

    def selectable(self, step: int) -> bool:
        """May the evaluation after `step` optimizer steps count as the run's best (what
        `trainer.select_best` restores and `summary.json → best` reports)? Default: every one;
        gradual pruning: only those at the final sparsity."""
        return True

    def best_state(self) -> dict | None:
        """Method state that belongs with the weights `trainer.select_best` keeps (None: the
        module's own state is all there is); `load_best_state` gets it back with those weights."""
        return None

    def load_best_state(self, state: dict) -> None:
        """The counterpart of `best_state`, called after the best weights were restored."""


def decay_groups(named_params, weight_decay: float) -> list[dict]:
    """Hugging Face's convention: no weight decay on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if any(t in name for t in NO_DECAY) or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
