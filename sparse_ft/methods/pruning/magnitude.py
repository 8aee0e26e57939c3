"""Magnitude pruning (MaP; Zhu & Gupta 2018, the PST paper's MaP baseline): everything trains,
and after optimizer steps the mask is re-chosen by |W| on the cubic schedule — dense for the first
`warmup_frac` of the steps, the final sparsity for the last `cooldown_frac`, cubic in between.

Pruned weights are exact zeros and stay pruned (their score is below every live weight's), so
the masks are nested over time and stop changing once the final sparsity is reached; the mask is
re-chosen every `prune_every` steps during the ramp and always at the step that reaches the
final sparsity.
"""

from __future__ import annotations

import torch

from ..registry import register
from .base import ScheduledPruning


@register("magnitude")
class MagnitudePruning(ScheduledPruning):
    """Gradual magnitude pruning (MaP) on the cubic schedule; dense fine-tuning of the live weights."""

    name = "magnitude"
    monotone = True

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().abs().float().masked_fill_(~self.keep[n], -1.0) for n, p in self.params.items()}
