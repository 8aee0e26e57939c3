"""The base of the mask-selecting methods (fish, random_mask, bitfit): a subclass only says which
entries to select; selection → exact sparse updates (sparse_update.py) → the sparse delta
(delta.py) at the end. The names of selection.py, sparse_update.py and delta.py are re-exported
here for the methods and tools that import them from one place."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ...core.options import MethodOptions, option
from ...models.heads import head_names
from ..base import Method, MethodContext, SelectionChanges, decay_groups
from .delta import SparseDelta, bits_differ, fingerprint, head_info, persistent_buffers  # noqa: F401
from .selection import (  # noqa: F401
    BASE_FILE, DELTA_FILE, DELTA_FORMAT, MASK_FILE, MASK_FORMAT, budget, full_mask, load_mask, mask_by_type, mask_size,
    named_params, random_mask, save_mask, topk_mask,
)
from .sparse_update import SparseUpdate, is_no_decay  # noqa: F401

log = logging.getLogger(__name__)

__all__ = [  # the methods' base classes, and the names re-exported from the three modules below it
    "MaskedOptions", "BudgetOptions", "MaskedMethod",
    "SparseDelta", "bits_differ", "fingerprint", "head_info", "persistent_buffers",
    "BASE_FILE", "DELTA_FILE", "DELTA_FORMAT", "MASK_FILE", "MASK_FORMAT", "budget", "full_mask",
    "load_mask", "mask_size", "named_params", "random_mask", "save_mask", "topk_mask", "SparseUpdate", "is_no_decay",
]


@dataclass
class MaskedOptions(MethodOptions):
    """Options every mask-selecting method shares."""

    classifier_in_mask: bool = option(True, "the newly initialised task head is always trained, counted inside k")


@dataclass
class BudgetOptions(MaskedOptions):
    """Methods that choose k = density·|θ| entries and may re-select them."""

    density: float = option(0.005, "k/|θ|: fraction of all parameters trained, head included", low=0, low_open=True, high=1)
    weight_grads: Literal["sampled", "dense"] = option("dense", "Linear weights partly in the mask: compute only the masked entries of the weight gradient (sampled) or the full dense gradient (dense; always under DDP). Equal to 1e-6; measured no faster on CPU yet, see README")
    mask_refresh_epochs: int | Literal["never"] | None = option("never", "re-select the mask after every n epochs (FISH §4.3), or never", low=1)


class MaskedMethod(SelectionChanges, Method):
    Options = MaskedOptions
    """A mask chosen in `prepare` (subclasses implement `select`), exact sparse training.

    Optionally re-selected during training (`method.mask_refresh_epochs`: after every n epochs,
    the FISH paper's §4.3), or deferred: with `ctx.defer_mask` (local SGD with a dense
    warm-up, §4.2) every parameter trains until the trainer's first `refresh_mask()` picks the
    mask from the warmed-up weights. After a refresh the sparse delta covers every entry any
    mask held (entries outside all masks stay bit-identical to the initial weights).
    """

    name = "masked"
    refreshable = True  # False: the selection does not depend on the weights (BitFit)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.update: SparseUpdate | None = None
        self.delta: SparseDelta | None = None
        self.mask: dict[str, torch.Tensor] = {}
        self.stats: dict = {"refreshes": 0}
        self.mask_bytes: int | None = None
        self.ctx: MethodContext | None = None

    # subclasses: the mask (without the head when classifier_in_mask); `round` counts refreshes
    def select(self, module: nn.Module, ctx: MethodContext, head: list[str], k: int | None, round: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def sampled_grads(self) -> bool:
        """Masked-entry weight gradients, unless asked otherwise or gradients are all-reduced by DDP
        (which only reduces the module's own parameters; local SGD's sparse phase runs without DDP)."""
        ctx = self.ctx
        ddp = ctx is not None and ctx.world_size > 1 and not ctx.local_sgd
        return self.cfg.get("weight_grads", "dense") == "sampled" and not ddp

    def head_in_mask(self) -> bool:
        return bool(self.cfg.get("classifier_in_mask", True))

    def mask_info(self) -> dict:
        return {}

    # --- selecting -------------------------------------------------------------------------------
    def _select_mask(self, round: int) -> dict[str, torch.Tensor]:
        module, ctx = self.module, self.ctx
        params = named_params(module)
        total = sum(p.numel() for p in params.values())
        head = head_names(module)
        head_size = sum(params[n].numel() for n in head)
        density = self.cfg.get("density")
        k = budget(total, float(density)) if density is not None else None
        phase = ctx.phase("mask") if ctx.phase is not None else _null()
        started = time.perf_counter()
        with phase:
            if self.head_in_mask() and head:
                rest = None if k is None else k - head_size
                if rest is not None and rest < 0:
                    log.warning("%s: the new head alone (%d entries) exceeds the budget k=%d; the mask is the head only", self.name, head_size, k)
                    rest = 0
                mask = self.select(module, ctx, head, rest, round)
                mask.update(full_mask(module, head))
            else:
                mask = self.select(module, ctx, [], k, round)
        self.stats["mask_seconds"] = self.stats.get("mask_seconds", 0.0) + time.perf_counter() - started
        self.stats.update(total_params=total, head_params=head_size if self.head_in_mask() else 0)
        if k is not None:
            self.stats["target_k"] = k
        return {n: mask.get(n, torch.zeros(0, dtype=torch.long)).long().cpu() for n in params}

    def _adopt(self, mask: dict[str, torch.Tensor], save: bool = True) -> None:
        params = named_params(self.module)
        self.mask = {n: mask.get(n, torch.zeros(0, dtype=torch.long)).long().cpu() for n in params}
        self.stats["k"] = mask_size(self.mask)
        self.stats["total_params"] = sum(p.numel() for p in params.values())
        if self.delta is not None:
            self.delta.extend(self.module, self.mask)
        if self.update is not None:
            self.update.close()
        self.previous_update = self.update  # the optimizer state is remapped from its layout
        self.update = SparseUpdate(self.module, self.mask, sampled_linear_grads=self.sampled_grads())
        if save and self.ctx is not None and self.ctx.run_dir is not None:
            self.mask_bytes = save_mask(Path(self.ctx.run_dir) / MASK_FILE, self.module, self.mask, {"method": self.name, "k": self.stats["k"], **self.mask_info()})

    # --- hooks -----------------------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext, resumed: dict | None = None) -> None:
        self.module, self.ctx = module, ctx
        params = named_params(module)
        head = head_names(module)
        if resumed is not None:  # the mask and the initial values come from the checkpoint
            self.stats = dict(resumed.get("stats", {})) or {"refreshes": 0}
            self.delta = SparseDelta.from_state(resumed["delta"])
            if resumed.get("mask") is None:  # still in the dense (deferred) phase
                self._go_dense(params)
                return
            mask = {n: t.long() for n, t in resumed["mask"].items()}
            path = Path(ctx.run_dir) / MASK_FILE if ctx.run_dir is not None else None
            self._adopt(mask, save=path is not None and not path.is_file())
            if path is not None and path.is_file():
                self.mask_bytes = path.stat().st_size
            log.info("%s: resumed with the saved mask (%d entries)", self.name, mask_size(self.mask))
            return
        if ctx.defer_mask:
            self.delta = SparseDelta.capture(module, ctx, full_names=head, track_all=True)
            self._go_dense(params)
            log.info("%s: mask deferred — every parameter trains until the first refresh (dense warm-up)", self.name)
            return
        mask = self._select_mask(0)
        self.delta = SparseDelta.capture(module, ctx, full_names=head, track=mask)
        self._adopt(mask)
        total = self.stats["total_params"]
        log.info(
            "%s: %d of %d entries trainable (%.4f%%, head %d) in %d tensors; mask in %.2fs",
            self.name, self.stats["k"], total, 100 * self.stats["k"] / total, self.stats["head_params"],
            sum(1 for i in self.mask.values() if i.numel()), self.stats["mask_seconds"],
        )

    def _go_dense(self, params) -> None:
        self.update, self.mask = None, {}
        for p in params.values():
            p.requires_grad_(True)

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.update is None:  # dense phase
            return decay_groups(self.module.named_parameters(), weight_decay)
        return self.update.param_groups(weight_decay)

    def after_backward(self, trainer) -> None:
        if self.update is not None:
            self.update.gather_grads()

    def after_step(self, trainer) -> None:
        if self.update is not None:
            self.update.scatter()

    def carry_optimizer_state(self, old, new) -> None:
        previous = getattr(self, "previous_update", None)
        if self.update is None or previous is None:
            return super().carry_optimizer_state(old, new)
        self.update.carry_state(previous, old, new)
        self.previous_update = None

    def sync_to_module(self) -> None:
        """The flat vectors were overwritten from outside (a local-SGD sync): write them back."""
        if self.update is not None:
            self.update.scatter()

    def refresh_due(self, epoch: int) -> bool:
        every = self.cfg.get("mask_refresh_epochs")
        if every in (None, "never") or not self.refreshable:
            return False
        return (epoch + 1) % int(every) == 0

    def refresh_mask(self) -> bool:
        """Re-select from the current weights; True when what the optimizer sees changed."""
        old = self.mask if self.update is not None else None
        self.stats["refreshes"] = self.stats.get("refreshes", 0) + 1
        mask = self._select_mask(self.stats["refreshes"])
        if old is not None and all(torch.equal(old[n], mask[n]) for n in mask):
            log.info("%s: mask refresh %d selected the same %d entries", self.name, self.stats["refreshes"], mask_size(mask))
            return False
        self._adopt(mask)
        log.info("%s: mask refresh %d: %d entries", self.name, self.stats["refreshes"], self.stats["k"])
        return True

    def mask_state(self) -> dict | None:
        if self.update is None:
            return None
        return {"mask": {n: i.to(torch.int32) for n, i in self.mask.items() if i.numel()}}

    def load_mask_state(self, state: dict | None) -> None:
        """Adopt rank 0's selection."""
        if state is None:
            return
        self.stats["refreshes"] = self.stats.get("refreshes", 0) + 1
        self._adopt({n: i.long() for n, i in state["mask"].items()}, save=False)

    def trainable_count(self) -> int:
        if self.update is None:
            return sum(p.numel() for p in self.module.parameters())
        return mask_size(self.mask)

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        out = self.delta.write(module, run_dir)
        if self.mask_bytes is not None:
            out[MASK_FILE] = self.mask_bytes
        return out

    def state_dict(self) -> dict:
        """What a resume needs: the mask and the delta's record of the initial weights (the
        masked values themselves live in the module's weights). `prepare(..., resumed=)` reuses
        this mask instead of selecting one from the (already trained) weights."""
        return {
            "mask": {n: i.to(torch.int32).cpu() for n, i in self.mask.items() if i.numel()} if self.update is not None else None,
            "delta": self.delta.state_dict() if self.delta is not None else None,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float, str, type(None)))},
        }

    def report(self) -> dict:
        k, total = self.stats.get("k", 0), self.stats.get("total_params", 0)
        out = {
            "k": k,
            "density": k / total if total else None,
            "target_density": self.cfg.get("density"),
            "head_params": self.stats.get("head_params"),
            "mask_seconds": self.stats.get("mask_seconds"),
            "optimizer_elements": k,
            "optimizer_state_bytes_adamw": 2 * 4 * k,  # exp_avg + exp_avg_sq, fp32, masked entries only
            "tensors_with_mask": sum(1 for i in self.mask.values() if i.numel()),
            "mask_by_type": mask_by_type(self.mask),  # where the k entries land (e.g. FISH's pooler share)
        }
        out.update({k2: v for k2, v in self.stats.items() if k2 not in ("k", "total_params", "head_params", "mask_seconds")})
        if self.delta is not None and hasattr(self.delta, "summary"):
            out.update(self.delta.summary)
        return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
