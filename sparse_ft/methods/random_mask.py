"""Random mask: k entries drawn uniformly (seeded), the same budget as FISH, trained exactly.

The FISH paper's control: same k, same exact sparse training, only the choice of entries
differs. The new head is in the mask and counted inside k, as for FISH.
"""

from __future__ import annotations

from ..config import ConfigError
from .masking import MaskedMethod, named_params, random_mask
from .registry import register


@register("random_mask")
class RandomMask(MaskedMethod):
    name = "random_mask"

    @staticmethod
    def validate(cfg) -> None:
        MaskedMethod.validate_common(cfg)
        if cfg.get("density") is None:
            raise ConfigError("method.density", "random_mask needs a density in (0, 1]")
        seed = cfg.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ConfigError("method.seed", f"{seed!r} must be a non-negative integer or null (= the run seed)")

    def select(self, module, ctx, head, k, round=0):
        params = named_params(module)
        seed = self.cfg.get("seed")
        seed = int(ctx.seed if seed is None else seed)
        if round:  # a refresh draws a new mask
            seed = seed * 1_000_003 + round
        self.stats.update(source="random", mask_seed=seed)
        return random_mask({n: p.numel() for n, p in params.items() if n not in head}, k, seed)
