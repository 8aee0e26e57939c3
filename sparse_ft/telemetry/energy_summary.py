"""``summary.json → energy``: the figures of one run's samples (energy.py collects them).

Pure functions of what the monitor recorded: per-GPU series, the phases' time intervals, the RAPL
readings and the reasons gathered along the way. The kWh integrals themselves are in kwh.py.
"""

from __future__ import annotations

from array import array
from typing import Mapping, Sequence

import numpy as np

from .kwh import UJ_PER_KWH, counter_delta, counter_kwh, interval_seconds, merge_intervals, power_kwh, util_kwh

PHASE_KEYS = ("seconds", "kwh_counter", "kwh_power_integral", "kwh_util_estimate", "cpu_kwh")


class Series:
    """One GPU's samples (compact arrays; NaN = field unavailable)."""

    __slots__ = ("index", "name", "power_limit_w", "t", "util", "power", "counter")

    def __init__(self, index: int):
        self.index = index
        self.name = ""
        self.power_limit_w: float | None = None
        self.t, self.util, self.power, self.counter = (array("d") for _ in range(4))

    def n_finite(self, ys) -> int:
        return int(np.isfinite(np.asarray(ys, dtype=float)).sum())


def _sum_or_none(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(sum(values))


def empty_summary(reason: str | None, interval_s: float, p0_kw: float | None) -> dict:
    return {
        "available": False, "reason": reason, "backend": None, "interval_s": interval_s,
        "gpus": [], "p0_kw": p0_kw, "samples": 0, "garbage_lines": 0,
        "kwh_counter": None, "kwh_power_integral": None, "kwh_util_estimate": None, "cpu_kwh": None,
        "phases": {},
    }


def energy_summary(*, requested: str, backend: str | None, interval_s: float, p0_kw: float | None,
                   series: Mapping[int, Series], samples: int, garbage_lines: int,
                   intervals: Mapping[str, list[tuple[float, float]]],
                   cpu: tuple[Sequence[float], Sequence[float]] | None, reasons: Sequence[str]) -> dict:
    """The energy block. ``requested``: `energy.backend`; ``backend``: the one that ran (None: none);
    ``cpu``: (times, cumulative µJ) of the RAPL readings, None without RAPL; ``p0_kw``: READ's
    estimator's power (None: each GPU's power limit)."""
    if requested == "off":
        out = empty_summary("energy.backend=off", interval_s, p0_kw)
        out["phases"] = {name: dict.fromkeys(PHASE_KEYS) | {"seconds": interval_seconds(ivs)} for name, ivs in intervals.items()}
        return out
    reasons = list(reasons)
    gpu_backend = backend in ("nvml", "nvidia_smi")
    gpus = [series[i] for i in sorted(series)] if gpu_backend else []
    arrays = [(s, np.asarray(s.t, dtype=float), np.asarray(s.util, dtype=float), np.asarray(s.power, dtype=float),
               np.asarray(s.counter, dtype=float)) for s in gpus]
    cpu_ok = cpu is not None and len(cpu[0]) >= 2
    cpu_t, cpu_uj = (np.asarray(x, dtype=float) for x in (cpu if cpu is not None else ((), ())))

    available = backend == "rapl" or (gpu_backend and samples > 0)
    if gpu_backend and samples == 0:
        reasons.append(f"no samples received from {backend}")
    elif gpu_backend and not any(s.n_finite(t) >= 2 for s, t, *_ in arrays):
        reasons.append("fewer than 2 samples per GPU: run shorter than energy.interval_s?")
    if gpu_backend:
        no_counter = [s.index for s, *_, c in arrays if s.n_finite(c) < 2]
        if no_counter and len(no_counter) < len(arrays):
            reasons.append(f"GPU(s) {no_counter} have no energy counter: kwh_counter is None")

    def p0(s: Series) -> float | None:
        if p0_kw is not None:
            return p0_kw
        return s.power_limit_w / 1000.0 if s.power_limit_w else None

    def figures(ivs) -> dict:
        counter, power, util = [], [], []
        for s, t, u, p, c in arrays:
            counter.append(counter_kwh(t, c, ivs) if s.n_finite(c) >= 2 else None)
            power.append(power_kwh(t, p, ivs) if s.n_finite(p) >= 2 else None)
            p0_s = p0(s)
            util.append(util_kwh(t, u, p0_s, ivs) if p0_s and s.n_finite(u) >= 2 else None)
        cpu_kwh = counter_delta(cpu_t, cpu_uj, ivs) / UJ_PER_KWH if cpu_ok else None
        return {"kwh_counter": _sum_or_none(counter), "kwh_power_integral": _sum_or_none(power),
                "kwh_util_estimate": _sum_or_none(util), "cpu_kwh": cpu_kwh}

    phases = {}
    for name, ivs in intervals.items():
        merged = merge_intervals(ivs)
        phases[name] = {"seconds": interval_seconds(merged)} | figures(merged)
    return {
        "available": bool(available),
        "reason": "; ".join(dict.fromkeys(r for r in reasons if r)) or None,
        "backend": backend,
        "interval_s": interval_s,
        "gpus": [{"index": s.index, "name": s.name, "power_limit_w": s.power_limit_w} for s in gpus],
        "p0_kw": p0_kw,
        "samples": int(samples),
        "garbage_lines": int(garbage_lines),
        **figures(None),
        "phases": phases,
    }
