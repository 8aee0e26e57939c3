"""What best-checkpoint selection (`trainer.select_best`) keeps: only the tensors training can have
changed, never a copy of the frozen backbone.

At the start of a stage the trainer records, for every tensor of `module.state_dict()`, its
identity and version counter (`Tensor._version`, which every in-place write bumps). A tensor is
kept when it is a trainable parameter (`requires_grad`), a persistent buffer (BatchNorm
statistics), or was written or replaced since the start (a method that edits frozen tensors in
place, a pruning mask applied to them). Tensors that share storage (T5's tied embedding under
four names) are kept once: `load_state_dict(strict=False)` of one name restores them all.
Everything else still holds its value from the start of the stage, so restoring the kept
tensors restores the whole model bit for bit.

Where the copy lives (`trainer.select_best_store`):
- `disk` (default): `<checkpoints>/.best.rank<r>.pt`, written in its own telemetry phase
  (`select_best`) by `torch.save`, which streams one storage at a time (no copy of the tensors in
  memory; safetensors would first build one), read back memory-mapped, and deleted when the stage
  ends, so the `train` phase's peak memory holds no copy at all (dense fine-tuning included: its
  copy would be a whole model);
- `memory`: CPU copies of the kept tensors (no disk writes), resident through training: for a
  frozen-backbone method that is its trainable part, for dense fine-tuning a whole model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError

log = logging.getLogger(__name__)

STORES = ("disk", "memory")


def select_best_store(cfg) -> str:
    value = cfg.get("select_best_store", "disk")
    if value not in STORES:
        raise ConfigError("trainer.select_best_store", f"{value!r} must be one of {' | '.join(STORES)}")
    return value


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


class BestWeights:
    """The best checkpoint's changed tensors (see the module docstring)."""

    def __init__(self, store: str = "memory", path: Path | None = None):
        if store == "disk" and path is None:
            store = "memory"  # no checkpoint directory (a bare Trainer): nowhere to write
        self.store, self.path = store, path
        self._tensors: dict[str, torch.Tensor] | None = None
        self._on_disk = False
        self._baseline: dict[str, tuple] = {}
        self._kept_at: dict[str, tuple] = {}  # every tensor's (identity, version) when the best was kept

    # --- what training can change ------------------------------------------------------
    def begin(self, module: nn.Module) -> None:
        """Record every state_dict tensor's identity and version (call when the stage starts)."""
        self._baseline = {k: (id(t), t._version) for k, t in module.state_dict(keep_vars=True).items()}

    def changed_keys(self, module: nn.Module) -> list[str]:
        """state_dict names that training may have changed since `begin`, one per shared storage."""
        buffers = {n for n, _ in module.named_buffers()}
        keys, seen = [], set()
        for k, t in module.state_dict(keep_vars=True).items():
            trainable = isinstance(t, nn.Parameter) and t.requires_grad
            written = self._baseline.get(k) != (id(t), t._version)
            if not (trainable or k in buffers or written):
                continue
            key = _storage_key(t)
            if key in seen:
                continue
            seen.add(key)
            keys.append(k)
        return keys

    # --- keeping and restoring ---------------------------------------------------------
    def keep(self, module: nn.Module) -> int:
        """Copy the changed tensors (to disk or CPU memory); returns the bytes kept."""
        state = module.state_dict(keep_vars=True)
        tensors = {k: state[k].detach() for k in self.changed_keys(module)}
        size = self.set(tensors)
        self._kept_at = {k: (id(t), t._version) for k, t in state.items()}
        return size

    def set(self, tensors: dict[str, torch.Tensor] | None) -> int:
        """Hold these tensors as the best checkpoint (a resume hands over the saved ones)."""
        self.clear()
        if tensors is None:
            return 0
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.store == "disk":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach() for k, v in tensors.items()}, self.path)
            self._on_disk = True
        else:
            self._tensors = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        return size

    def add_unwritten(self, module: nn.Module) -> int:
        """What trains was re-selected (a mask refresh): tensors the kept best left out as unchanged
        may be written from now on, and `restore` could no longer rebuild them. Nothing has written
        them since the best was kept (or, for a best read back from a checkpoint, since this
        process's stage began), so they still hold their best values: they join the kept tensors
        now (one copy of what was left out, at each refresh after a best exists). Returns the bytes added."""
        kept = self.tensors()
        if kept is None:
            return 0
        kept = dict(kept)
        state = module.state_dict(keep_vars=True)
        storages = {_storage_key(state[k]) for k in kept if k in state}
        reference = self._kept_at or self._baseline
        added = {}
        for k, t in state.items():
            key = _storage_key(t)
            if k in kept or key in storages or reference.get(k) != (id(t), t._version):
                continue
            storages.add(key)
            added[k] = t.detach()
        if not added:
            return 0
        kept_at = self._kept_at
        self.set({**kept, **added})
        self._kept_at = kept_at
        return sum(t.numel() * t.element_size() for t in added.values())

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """The kept tensors (read back from disk in `disk` mode), None when nothing was kept."""
        if self._on_disk:
            try:
                return torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # a torch that cannot map this file: read it
                return torch.load(self.path, map_location="cpu", weights_only=True)
        return self._tensors

    @property
    def empty(self) -> bool:
        return not self._on_disk and self._tensors is None

    def restore(self, module: nn.Module) -> None:
        tensors = self.tensors()
        if tensors is None:
            return
        if self._kept_at:  # a tensor left out as unchanged must not have been written since
            kept = {_storage_key(t) for k, t in module.state_dict(keep_vars=True).items() if k in tensors}
            stale = [k for k, t in module.state_dict(keep_vars=True).items()
                     if self._kept_at.get(k) == self._baseline.get(k) and (id(t), t._version) != self._baseline.get(k) and _storage_key(t) not in kept]
            if stale:
                raise RuntimeError(f"select_best: {stale[:5]} were written after the best checkpoint was kept, which left them out as "
                                   "unchanged; their best values are unknown (a method that starts writing frozen tensors mid-stage)")
        result = module.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"select_best: the kept tensors name {result.unexpected_keys[:5]} which this model does not have")

    def clear(self) -> None:
        self._tensors = None
        self._kept_at = {}
        if self._on_disk and self.path is not None:
            self.path.unlink(missing_ok=True)
        self._on_disk = False
