"""Random mask: k entries drawn uniformly (seeded), the same budget as FISH, trained exactly.

The FISH paper's control: same k, same exact sparse training, only the choice of entries
differs. The new head is in the mask and counted inside k, as for FISH.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.options import option
from .masking import BudgetOptions, MaskedMethod, named_params, random_mask
from ..registry import register


@dataclass
class RandomMaskOptions(BudgetOptions):
    density: float = option(0.005, "k/|θ|: fraction of all parameters trained, head included", low=0, low_open=True, high=1)
    seed: int | None = option(None, "seed of the draw; null = the run's seed", low=0)


@register("random_mask")
class RandomMask(MaskedMethod):
    name = "random_mask"
    Options = RandomMaskOptions

    def select(self, module, ctx, head, k, round=0):
        params = named_params(module)
        seed = self.cfg.get("seed")
        seed = int(ctx.seed if seed is None else seed)
        if round:  # a refresh draws a new mask
            seed = seed * 1_000_003 + round
        self.stats.update(source="random", mask_seed=seed)
        return random_mask({n: p.numel() for n, p in params.items() if n not in head}, k, seed)
