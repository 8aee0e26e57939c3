"""Gradual sparsity schedules (Zhu & Gupta 2018, "To prune, or not to prune").

    s(t) = 0                                          t <= t0
    s(t) = s_f · (1 − (1 − (t − t0) / (t1 − t0))³)     t0 < t < t1
    s(t) = s_f                                        t >= t1

with t the number of optimizer steps done, t0 = round(warmup_frac·T) (dense warm-up) and
t1 = T − round(cooldown_frac·T) (the cool-down trains at the final sparsity). The boundaries are
whole steps, so "the first 10% of steps dense" means exactly that many steps and the final
sparsity is exactly s_f from step t1 on (never a float a hair below it). It equals
`torch.ao.pruning.CubicSL.sparsity_compute_fn(0, s_f, t, t0, 1, t1 − t0, initially_zero=True)`.
"""

from __future__ import annotations


def ramp_bounds(total_steps: int, warmup_frac: float, cooldown_frac: float) -> tuple[int, int]:
    """(t0, t1): the last dense step and the first step at the final sparsity."""
    total = max(int(total_steps), 1)
    t0 = int(round(warmup_frac * total))
    t1 = max(t0, total - int(round(cooldown_frac * total)))
    return t0, t1


def cubic_sparsity(step: int, total_steps: int, final: float, warmup_frac: float = 0.1, cooldown_frac: float = 0.3) -> float:
    """The target sparsity after `step` optimizer steps of `total_steps` (see the module docstring)."""
    t0, t1 = ramp_bounds(total_steps, warmup_frac, cooldown_frac)
    if step >= t1:
        return float(final)
    if step <= t0:
        return 0.0
    frac = (step - t0) / (t1 - t0)
    return float(final) * (1.0 - (1.0 - frac) ** 3)
