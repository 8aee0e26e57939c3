"""Movement pruning (MvP; Sanh et al. 2020, the PST paper's MvP baseline).

Every prunable weight W has a score tensor S of its shape, initialised to |W| (the project
decision of METHODS.md §2, as the PST paper does to avoid a collapse). The layer computes with
W ⊙ M, M = top-v of S; S learns through the straight-through estimator: ∂L/∂S = ∂L/∂(W⊙M) ⊙ W,
so S accumulates −∂L/∂W ⊙ W (weights moving away from zero gain score). The scores are trained
by the run's optimizer in their own group (`score_lr`, no weight decay, the same lr schedule);
the weights train as usual, a pruned weight gets no gradient. The scores are parameters the
pretrained model does not have: `params.trainable` and `params.added` both count them.

In place: a pruned weight is held at exactly zero in the model (base.py) and its value is kept
aside (`hidden`), so when its score climbs back into the top-v it returns with the value it had.
The mask is re-chosen every `prune_every` steps on the cubic schedule, in the cool-down too
(scores keep moving; the sparsity stays exactly the final one).

The scores' learning rate (`score_lr`) decides the method. 1e-2 is emmental's value (Sanh et al.'s
code), made for ~10-epoch runs from constant scores: kept as the default for the paper-length
runs (sweeps/pst_glue.yaml: 10–40 epochs). From the |W| start it erases the magnitude information
within a few steps of a short run — on a 63-step CPU proxy MvP ends at chance (50.0 at 50%
sparsity where MaP gets 90.2; 93.8 at 5e-5) — so a short run must set it for its length
(sweeps/reproduce_cpu_pst.yaml: 5e-5 for 63 steps). A run whose best evaluation at the final
sparsity is no better than predicting the majority class says so: a warning in the log and
`method_report.at_chance: true` in summary.json (with the majority rate it was compared to).

`trainer.select_best` keeps the scores, masks and pruned values with the best weights of the
cool-down (`best_state`), so the saved mask is the one the best weights were evaluated with.

Gradients are read in `after_backward`, before clipping and before a GradScaler unscales them:
with `trainer.precision=fp16` the scores would take scaled gradients (use bf16 or fp32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from ...core.options import option
from ..base import Method, decay_groups
from ..registry import register
from .base import ScheduledPruning, ScheduleOptions

log = logging.getLogger(__name__)


@dataclass
class MovementOptions(ScheduleOptions):
    score_lr: float = option(1e-2, "learning rate of the movement scores (own optimizer group, no weight decay, the run's lr schedule); "
                                   "1e-2 is emmental's for ~10-epoch runs, a short run needs less (63 steps: 5e-5)", low=0, low_open=True)


@register("movement")
class MovementPruning(ScheduledPruning):
    """Movement pruning (MvP): scores S = |W| − Σ ∂L/∂W ⊙ W learned straight-through, top-v by S on the cubic schedule."""

    name = "movement"
    Options = MovementOptions
    monotone = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.score_params: dict[str, nn.Parameter] = {}
        self.hidden: dict[str, torch.Tensor] = {}

    def init_state(self) -> None:
        self.score_params = {n: nn.Parameter(p.detach().abs().float().clone()) for n, p in self.params.items()}
        self.hidden = {n: torch.zeros_like(p, requires_grad=False) for n, p in self.params.items()}

    def adopt_state(self, state: dict) -> None:
        super().adopt_state(state)
        with torch.no_grad():
            for n, s in state["scores"].items():
                self.score_params[n].copy_(s)
            for n, v in state["hidden"].items():
                self.hidden[n][~self.keep[n]] = v.to(self.hidden[n].device, self.hidden[n].dtype)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["scores"] = {n: s.detach().to("cpu", copy=True) for n, s in self.score_params.items()}
        state["hidden"] = {n: h[~self.keep[n]].to("cpu", copy=True) for n, h in self.hidden.items()}
        return state

    def param_groups(self, weight_decay: float) -> list[dict]:
        groups = decay_groups(self.module.named_parameters(), weight_decay)
        groups.append({"params": list(self.score_params.values()), "weight_decay": 0.0, "lr": float(self.opts.score_lr)})
        return groups

    def trainable_count(self) -> int:
        """Every parameter plus the scores (the PST paper counts MvP at 2× the weights it prunes)."""
        return Method.trainable_count(self) + sum(s.numel() for s in self.score_params.values())

    def added_count(self) -> int:
        """The scores: one per prunable weight, trained but absent from the pretrained model (as
        PST counts its small matrices); `trainable` includes them, so `added` must too."""
        return sum(s.numel() for s in self.score_params.values())

    @torch.no_grad()
    def after_backward(self, trainer) -> None:
        for n, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            keep = self.keep[n]
            dense = torch.where(keep, p, self.hidden[n])  # W (pruned entries: their kept-aside value)
            s = self.score_params[n]
            s.grad = (g * dense).to(s.dtype)  # straight-through: ∂L/∂S = ∂L/∂(W⊙M) ⊙ W
            g.masked_fill_(~keep, 0.0)

    def scores(self) -> dict[str, torch.Tensor]:
        return {n: s.detach() for n, s in self.score_params.items()}

    @torch.no_grad()
    def on_change(self, old, new) -> None:
        for n, p in self.params.items():
            leaving = old[n] & ~new[n]
            returning = ~old[n] & new[n]
            self.hidden[n][leaving] = p[leaving]
            p[returning] = self.hidden[n][returning]
        self.stats["regrown_entries"] = self.stats.get("regrown_entries", 0) + sum(int((~old[n] & new[n]).sum()) for n in new)

    # --- the best checkpoint (trainer.select_best) ------------------------------------------
    def best_state(self) -> dict:
        return self.state_dict()

    def load_best_state(self, state: dict) -> None:
        self.adopt_state(state)

    # --- a chance-level result is reported as such ----------------------------------------------
    def majority_rate(self) -> float | None:
        """The share of the most frequent training label (None: no class labels)."""
        feats = getattr(self.ctx, "train_features", None) or []
        labels = [f.get("labels") for f in feats if isinstance(f, dict)]
        labels = [int(x) for x in labels if isinstance(x, int) or (torch.is_tensor(x) and x.numel() == 1 and not x.is_floating_point())]
        if not labels or len(labels) != len(feats):
            return None
        return max(labels.count(v) for v in set(labels)) / len(labels)

    def end_stage(self, index, stage, result: dict) -> None:
        best = (result.get("best") or {}).get("metrics") or {}
        split = next(iter(best), None)
        acc = best[split].get("accuracy") if split else None
        chance = self.majority_rate()
        if acc is None or chance is None:
            return
        at_chance = bool(acc <= chance + 0.01)
        self.stats.update(at_chance=at_chance, best_accuracy=float(acc), majority_rate=float(chance))
        if at_chance:
            log.warning("movement: the best %s accuracy at the final sparsity (%.4f) is at chance (majority class %.4f): "
                        "method.score_lr=%g is likely too large for this run's %d steps (it erases the |W| initial scores)",
                        split, acc, chance, self.opts.score_lr, self.total_steps)

    def report(self) -> dict:
        out = super().report()
        out.update(score_lr=float(self.opts.score_lr), score_entries=sum(s.numel() for s in self.score_params.values()))
        return out
