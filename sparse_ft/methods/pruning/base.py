"""What the pruning methods share: their options, the in-place masks and the end of a run.

In-place masks (omp, imp, magnitude, movement): the model keeps its layout; a pruned entry is
held at exactly +0.0 in the weight itself. `after_backward` zeroes the pruned entries' gradients
(so clipping and the optimizer see only live entries) and `after_step` writes +0.0 into them
again (`masked_fill_`, never a multiplication: −x·0 would be −0.0), so whatever the optimizer's
momentum or weight decay did, every forward pass and the final checkpoint hold exact zeros.

`finalize` measures the sparsity on the exported weights (never reads it from the config),
writes the final mask (`prune_mask.safetensors`, packed bits) and the compact weights
(`sparse_weights.safetensors`: bitmask + kept values per pruned tensor, the rest dense), and
returns both sizes as storage artifacts. `report()["sparsity"]` carries `overall` (exact zeros /
prunable entries), `per_layer`, `all_parameters` (zeros over every parameter) and the target.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import Method, MethodContext, Schedule, Stage, Staged
from .masks import COMPACT_FILE, MASK_FILE, measure, pack_state, pruned_count, save_compact, save_masks, select, unpack_state
from .schedule import cubic_sparsity, ramp_bounds
from .targets import group_name, prunable

log = logging.getLogger(__name__)


def normalise_modules(value) -> list[str] | None:
    """`method.modules` as a plain list of regular expressions (a single string is one; an
    OmegaConf ListConfig from the command line becomes a list)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items:
        raise ConfigError("method.modules", "an empty list selects nothing; use null for the default rule")
    if not all(isinstance(x, str) for x in items):
        raise ConfigError("method.modules", f"{items!r} must be regular expressions (strings)")
    return items


@dataclass
class PruningOptions(MethodOptions):
    sparsity: float = option(0.5, "final fraction of exact zeros in the prunable weights, in [0, 1) (not used with an N:M pattern)", low=0, high=1, high_open=True)
    scope: Literal["global", "layer"] = option("global", "global: one threshold over all prunable weights | layer: every weight matrix pruned to the sparsity")
    modules: Sequence | None = option(None, "regular expressions over module names choosing the prunable nn.Linear/nn.Conv2d weights; "
                                        "null = every nn.Linear inside the transformer blocks (ResNet: every Conv2d/Linear but the head)")

    def check(self) -> None:
        self.modules = normalise_modules(self.modules)


@dataclass
class ScheduleOptions(PruningOptions):
    sparsity: float = option(0.9, "final fraction of exact zeros in the prunable weights, in [0, 1) (PST's headline: 0.9)", low=0, high=1, high_open=True)
    scope: Literal["global", "layer"] = option("layer", "layer: every weight matrix pruned to the sparsity (PST's f(S, v) per matrix) | global: one threshold over all")
    schedule: Literal["cubic"] = option("cubic", "sparsity schedule: cubic (Zhu & Gupta 2018), from 0 to `sparsity`")
    warmup_frac: float = option(0.1, "fraction of the optimizer steps trained dense before pruning starts", low=0, high=1, high_open=True)
    cooldown_frac: float = option(0.3, "fraction of the optimizer steps at the end trained at the final sparsity", low=0, high=1, high_open=True)
    prune_every: int = option(1, "re-select the mask every n optimizer steps (the step that first reaches the final sparsity always does)", low=1)

    def check(self) -> None:
        super().check()
        if self.warmup_frac + self.cooldown_frac > 1:
            raise ConfigError("method.cooldown_frac", f"warmup_frac + cooldown_frac = {self.warmup_frac + self.cooldown_frac:g} exceeds 1")


class PruningMethod(Method):
    """Base of the pruning methods: prunable weights, in-place masks, state, finalize, report."""

    name = "pruning"
    Options = PruningOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ctx: MethodContext | None = None
        self.targets: dict[str, tuple[str, nn.Module]] = {}
        self.params: dict[str, nn.Parameter] = {}
        self.keep: dict[str, torch.Tensor] = {}
        self.level = 0.0  # the sparsity the current masks were chosen for
        self.stats: dict = {}
        self.sparsity_block: dict | None = None

    # --- targets and masks ---------------------------------------------------------------------
    def find_targets(self, module: nn.Module, kinds=None) -> None:
        self.targets = prunable(module, self.opts.modules, **({"kinds": kinds} if kinds else {}))
        params = dict(module.named_parameters())
        self.params = {n: params[n] for n in self.targets}

    def all_kept(self) -> dict[str, torch.Tensor]:
        return {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        for n, p in self.params.items():
            p.masked_fill_(~self.keep[n], 0.0)

    def share_masks(self) -> bool:
        """Under torch.distributed (DDP or local SGD, world size > 1) every rank adopts rank 0's
        masks, so all ranks hold the same zeros even where a score is not bit-reproducible across
        processes (e.g. `score=fisher`). Collective: every rank calls it at the same point. True
        when the masks were broadcast."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return False
        box = [pack_state(self.keep) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(box, src=0)
        if dist.get_rank() != 0:
            device = next(iter(self.params.values())).device if self.params else None
            mine, self.keep = self.keep, unpack_state(box[0], device)
            differ = sum(int((mine[n] != self.keep[n]).sum()) for n in self.keep if n in mine)
            if differ:
                log.warning("%s: rank %d's own mask differed from rank 0's in %d entries; rank 0's is used", self.name, dist.get_rank(), differ)
        return True

    def choose(self, scores: dict[str, torch.Tensor], sparsity: float, nm=None) -> dict[str, torch.Tensor]:
        return select(scores, sparsity, self.opts.get("scope", "global"), nm)

    def pruned(self) -> int:
        return pruned_count(self.keep)

    # --- hooks ------------------------------------------------------------------------------------
    def after_backward(self, trainer) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.masked_fill_(~self.keep[n], 0.0)

    def after_step(self, trainer) -> None:
        self.apply_masks()

    def trainable_count(self) -> int:
        """Entries the optimizer may change: the parameters that train, less the pruned entries
        (held at zero for the whole run)."""
        return super().trainable_count() - self.pruned()

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"keep": pack_state(self.keep), "level": self.level, "stats": dict(self.stats)}

    def adopt_state(self, state: dict) -> None:
        """Take over a saved `state_dict()` (a resume's, in `prepare`; the best weights', in
        `load_best_state`): the masks are reused, not chosen again from the trained weights."""
        device = next(iter(self.params.values())).device if self.params else None
        self.keep = unpack_state(state["keep"], device)
        self.level = float(state.get("level", 0.0))
        self.stats.update(state.get("stats") or {})
        self.apply_masks()

    # --- the end of the run -----------------------------------------------------------------------
    def final_keep(self) -> dict[str, torch.Tensor]:
        return self.keep

    def parameter_names(self, module: nn.Module) -> list[str]:
        """The base model's parameter names (what `all_parameters` sparsity counts over)."""
        return [n for n, _ in module.named_parameters()]

    def target_sparsity(self) -> float:
        return float(self.opts.sparsity)

    def param_bases(self, total: int) -> dict:
        """The trainable count also on the basis the PST paper uses for every method: MvP's
        trainables, i.e. all the model's parameters plus one score per prunable weight (BERT-base:
        PST's 2,821,634 of ~194M = 1.45%, the paper's "1.5%"; of the model's 110M it is 2.58%)."""
        prunable = sum(p.numel() for p in self.params.values())
        basis = int(total) + prunable
        return {"mvp_basis": basis, "trainable_fraction_mvp_basis": self.trainable_count() / basis if basis else 0.0}

    def mask_info(self) -> dict:
        return {"method": self.name, "target": self.target_sparsity(), "scope": self.opts.get("scope"), "pattern": self.opts.get("pattern", "unstructured")}

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        weights = self.export(module)
        keep = self.final_keep()
        self.sparsity_block = measure(weights, list(keep), self.parameter_names(module))
        run_dir = Path(run_dir)
        out = {
            MASK_FILE: save_masks(run_dir / MASK_FILE, keep, self.mask_info()),
            COMPACT_FILE: save_compact(run_dir / COMPACT_FILE, weights, keep, self.mask_info()),
        }
        log.info("%s: measured sparsity %.4f of %d prunable weights (target %.4f); compact weights %d bytes",
                 self.name, self.sparsity_block["overall"], self.sparsity_block["prunable"], self.target_sparsity(), out[COMPACT_FILE])
        return out

    def sparsity_report(self) -> dict:
        block = dict(self.sparsity_block or {})
        block.update(target=self.target_sparsity(), scope=self.opts.get("scope"), pattern=self.opts.get("pattern", "unstructured"))
        if "per_layer" in block:  # one row per module type too (layer indices as *)
            groups: dict[str, list] = {}
            for name, frac in block["per_layer"].items():
                groups.setdefault(group_name(name), []).append((frac, self.params[name].numel() if name in self.params else 1))
            block["per_type"] = {g: sum(f * n for f, n in v) / sum(n for _, n in v) for g, v in groups.items()}
        return block

    def summary_blocks(self) -> dict:
        return {"sparsity": self.sparsity_report()}  # summary.json → sparsity: what the report plots

    def report(self) -> dict:
        pruned = self.pruned()
        return {
            "sparsity": self.sparsity_report(),
            "prunable_tensors": len(self.targets),
            "pruned_entries": pruned,
            # entries changed by pruning rather than by training (the contract's "merged" entries)
            "merged_entries": pruned,
            **self.stats,
        }


class ScheduledPruning(Staged, Schedule, PruningMethod):
    """Gradual pruning on the cubic schedule: the mask is re-chosen after optimizer steps from
    `scores()`; the final sparsity is reached exactly at step t1 = T − round(cooldown_frac·T).

    Selection (`selectable`): only evaluations at the final sparsity compete for the best, so
    `trainer.select_best` (on by default) restores the best checkpoint of the cool-down and
    `summary.json → best` is the best evaluation at the target sparsity — the PST authors' code
    reports the best validation epoch within the cool-down. An earlier, denser checkpoint is never a
    result. `trainer.select_best=false` keeps the last weights."""

    Options = ScheduleOptions
    monotone = True  # pruned entries never return: once at the final sparsity the mask is final

    def __init__(self, cfg):
        super().__init__(cfg)
        self.total_steps = 0

    def selectable(self, step: int) -> bool:
        """Evaluations count for the best only once the masks are at the final sparsity."""
        return self.level >= float(self.opts.sparsity)

    def begin_stage(self, index: int, stage: Stage, ctx: MethodContext) -> None:
        self.total_steps = int(ctx.total_steps)

    def target(self, done: int) -> float:
        o = self.opts
        return cubic_sparsity(done, self.total_steps, float(o.sparsity), float(o.warmup_frac), float(o.cooldown_frac))

    def due(self, done: int) -> float | None:
        """The sparsity to prune to after `done` steps, or None when the mask stays."""
        t = self.target(done)
        final = float(self.opts.sparsity)
        if t <= 0:
            return None
        if t >= final and self.level < final:
            return t
        if self.monotone and self.level >= final:
            return None
        return t if done % int(self.opts.prune_every) == 0 else None

    def scores(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_change(self, old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> None:
        """Called before the new masks replace the old ones (movement keeps pruned values)."""

    @torch.no_grad()
    def reprune(self, sparsity: float) -> None:
        new = self.choose(self.scores(), sparsity)
        self.on_change(self.keep, new)
        self.keep = new
        self.level = sparsity
        self.apply_masks()
        self.stats["mask_updates"] = self.stats.get("mask_updates", 0) + 1

    def prepare(self, module: nn.Module, ctx: MethodContext, resumed: dict | None = None) -> None:
        super().prepare(module, ctx)
        self.ctx = ctx
        self.total_steps = int(ctx.total_steps)
        self.find_targets(module)
        self.keep = self.all_kept()
        self.init_state()
        if resumed is not None:
            self.adopt_state(resumed)

    def init_state(self) -> None:
        """Method-specific state created in `prepare`, before a resumed state is adopted."""

    def trainable_count(self) -> int:
        """What the optimizer sees: every parameter, pruned entries included (their gradients are
        zeroed, but which entries are pruned changes during the run)."""
        return Method.trainable_count(self)

    def after_step(self, trainer) -> None:
        self.apply_masks()
        t = self.due(trainer.state.step + 1)
        if t is not None:
            self.reprune(t)

    def sparsity_report(self) -> dict:
        block = super().sparsity_report()
        t0, t1 = ramp_bounds(self.total_steps, float(self.opts.warmup_frac), float(self.opts.cooldown_frac))
        block["schedule"] = {"kind": self.opts.schedule, "total_steps": self.total_steps, "dense_until_step": t0, "final_from_step": t1,
                             "prune_every": int(self.opts.prune_every), "level": self.level}
        return block
