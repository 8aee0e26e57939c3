"""Iterative magnitude pruning with rewinding to the pretrained weights (IMP / lottery tickets,
the Essential Sparsity paper's LTH baseline): `rounds` full fine-tunes, one training stage each.

The lottery-ticket procedure (the default, `dense_first=true`): round 0 fine-tunes the dense
model; before every later round i the prunable weights are pruned to sparsity
s_i = 1 − (1 − p)^i — p = `prune_per_round` of the weights still alive — by the magnitude of the
weights the previous round *trained*, every parameter is rewound to the run's initial weights θp
(snapshot taken in `prepare`: the pretrained body and the new head's initialisation) and the mask
is applied; the round then fine-tunes with the mask fixed (pruned entries exactly zero). A pruned
weight is never revived, so the masks are nested. `dense_first=false` skips the dense round:
round 0 starts from the one-shot magnitude mask of θp at p (OMP), s_i = 1 − (1 − p)^(i+1) — its
first mask is the OMP mask by construction.

The run directory keeps every round's mask (`masks/round_<i>.safetensors`) and `masks/rounds.json`
(sparsity, the round's best validation score and step, the cosine similarity of the round's mask
to the one-shot magnitude mask of θp at the same sparsity, and beside it the cosine of a uniformly
random mask of that sparsity — the floor, ≈ 1 − s — which the IMP/OMP figure must beat). While rounds remain, the checkpoint's
method state carries θp (a resume mid-run still rewinds to the true initial weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Literal

import torch

from ...core.options import MethodOptions, option
from ...core.io import atomic_write_text
from ..base import MethodContext, Stage, Staged
from ..registry import register
from .base import PruningMethod, normalise_modules
from .masks import cosine, save_masks, select

log = logging.getLogger(__name__)


@dataclass
class ImpOptions(MethodOptions):
    rounds: int = option(3, "training rounds (stages), each a full fine-tune; at least 2 (dense_first: round 0 is the dense fine-tune); final sparsity 1 - (1 - prune_per_round)^(rounds - 1) (dense_first=false: ^rounds)", low=2)
    prune_per_round: float = option(0.2, "fraction of the remaining prunable weights removed before each round", low=0, high=1, low_open=True, high_open=True)
    dense_first: bool = option(True, "true: round 0 fine-tunes the dense model (the lottery-ticket procedure) | false: round 0 starts "
                                     "from the one-shot magnitude mask of the pretrained weights (OMP at prune_per_round)")
    scope: Literal["global", "layer"] = option("global", "global: one threshold over all prunable weights | layer: every weight matrix pruned alike")
    modules: Sequence | None = option(None, "regular expressions over module names choosing the prunable nn.Linear/nn.Conv2d weights; "
                                        "null = every nn.Linear inside the transformer blocks (ResNet: every Conv2d/Linear but the head)")

    def check(self) -> None:
        self.modules = normalise_modules(self.modules)


@register("imp")
class IterativeMagnitude(Staged, PruningMethod):
    """Iterative magnitude pruning with rewinding to the pretrained weights (lottery ticket), one stage per round."""

    name = "imp"
    Options = ImpOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.round = -1
        self.rewind: dict[str, torch.Tensor] | None = None
        self.rounds_info: list[dict] = []
        self.run_dir: Path | None = None

    def round_sparsity(self, i: int) -> float:
        exponent = i if self.opts.dense_first else i + 1
        return 1.0 - (1.0 - float(self.opts.prune_per_round)) ** exponent

    def target_sparsity(self) -> float:
        return self.round_sparsity(int(self.opts.rounds) - 1)

    def stages(self) -> list[Stage]:
        return [Stage(f"round_{i}") for i in range(int(self.opts.rounds))]

    def prepare(self, module, ctx: MethodContext, resumed: dict | None = None) -> None:
        super().prepare(module, ctx)
        self.ctx = ctx
        self.run_dir = Path(ctx.run_dir) if ctx.run_dir is not None else None
        self.find_targets(module)
        self.keep = self.all_kept()
        if resumed is not None:  # the module holds trained weights: θp and the masks come from the checkpoint
            self.adopt_state(resumed)
            self.round = int(resumed["round"])
            self.rounds_info = list(resumed.get("rounds_info") or [])
            params = dict(module.named_parameters())
            rewind = resumed.get("rewind")
            self.rewind = {n: t.to(params[n].device) for n, t in rewind.items()} if rewind else None
            return
        self.rewind = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def begin_stage(self, index: int, stage: Stage, ctx: MethodContext) -> None:
        if self.rewind is None:
            raise RuntimeError("imp: no snapshot of the initial weights to rewind to (a resume from a checkpoint without one)")
        params = dict(self.module.named_parameters())
        sparsity = self.round_sparsity(index)
        # prune by the magnitude of the weights the last round trained; pruned entries score -1
        # and go first, so a mask never revives a weight (nested masks)
        scores = {n: p.abs().float().masked_fill_(~self.keep[n], -1.0) for n, p in self.params.items()}
        self.keep = select(scores, sparsity, self.opts.scope)
        for n, p in params.items():
            p.copy_(self.rewind[n])
        self.apply_masks()
        self.level, self.round = sparsity, index
        omp = select({n: self.rewind[n].abs() for n in self.params}, sparsity, self.opts.scope)
        g = torch.Generator().manual_seed(int(getattr(ctx, "seed", 0) or 0) * 1000 + index)
        rand = select({n: torch.rand(p.shape, generator=g) for n, p in self.params.items()}, sparsity, self.opts.scope)
        info = {"round": index, "sparsity": sparsity, "pruned_entries": self.pruned(), "omp_mask_cosine": cosine(self.keep, omp),
                "random_mask_cosine": cosine(rand, omp)}  # the floor: a uniformly random mask of the same sparsity
        if self.run_dir is not None:
            path = self.run_dir / "masks" / f"round_{index}.safetensors"
            info["mask_file"] = str(path.relative_to(self.run_dir))
            info["mask_bytes"] = save_masks(path, self.keep, {"method": self.name, "round": index, "sparsity": sparsity, "scope": self.opts.scope})
        self.rounds_info = [r for r in self.rounds_info if r["round"] < index] + [info]
        self._write_rounds()
        if index + 1 == int(self.opts.rounds):
            self.rewind = None  # nothing to rewind to after the last round: the checkpoints stay small
        log.info("imp: round %d/%d at sparsity %.4f (%d pruned), rewound to the initial weights; mask cosine to OMP %.4f (a random mask: %.4f)",
                 index + 1, self.opts.rounds, sparsity, info["pruned_entries"], info["omp_mask_cosine"], info["random_mask_cosine"])

    def end_stage(self, index: int, stage: Stage, result: dict) -> None:
        best = result.get("best") or {}
        for r in self.rounds_info:
            if r["round"] == index:
                r.update(steps=result.get("steps"), best_main=best.get("main"), best_step=best.get("step"))
        self._write_rounds()

    def _write_rounds(self) -> None:
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "masks" / "rounds.json", json.dumps(self.rounds_info, indent=2) + "\n")

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(round=self.round, rounds_info=list(self.rounds_info))
        if self.rewind is not None:
            state["rewind"] = {n: t.to("cpu", copy=True) for n, t in self.rewind.items()}
        return state

    def report(self) -> dict:
        out = super().report()
        out.update(rounds=self.rounds_info, prune_per_round=float(self.opts.prune_per_round), dense_first=bool(self.opts.dense_first))
        return out
