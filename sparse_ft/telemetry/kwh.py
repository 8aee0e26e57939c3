"""The kWh figures of the energy telemetry, as pure functions over sample arrays (times in seconds,
any common origin), so each can be checked by hand.

Three GPU energy figures are reported, each as a total and per phase:

``kwh_counter``
    NVML ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta+): last − first
    sample, summed over GPUs (1 kWh = 3.6e9 mJ). Per phase, the counter is linearly
    interpolated at the phase boundaries. None without a counter (nvidia-smi, pre-Volta).
``kwh_power_integral``
    ∫ power dt with the trapezoid rule over the samples of each GPU, summed (W·s / 3.6e6).
``kwh_util_estimate``
    READ's Appendix D estimate in continuous form (their eq. 15): per GPU
    ``E = p0 · ∫ u(t)/100 dt`` with u the utilisation in percent, integrated with the same
    trapezoid rule, and p0 that GPU's enforced power limit in kW unless ``energy.p0_kw`` is
    set (READ: 0.25 kW, the V100's TDP). In kWh: ``p0_kw * ∫(u/100) dt[s] / 3600``.

    Relation to READ's eq. 16, ``E = U · p0 / 6000`` with ``U = Σ_i u_i`` the sum of the
    per-minute percent samples: each sample then stands for 60 s, and
    ``Σ_i (u_i/100) · p0 · 60 s / 3600 s/h = U · p0 / 6000`` — the rectangle rule of the same
    integral. With 1-minute samples the trapezoid rule used here gives exactly
    ``U · p0 / 6000 − p0 · (u_first + u_last) / 12000`` (the two end samples count half a
    minute), i.e. the two agree up to half a sample at each end (see :func:`read_eq16_kwh`).

Per-phase figures integrate only the part of each GPU's sample curve inside the phase's
intervals: trapezoids are clipped at the boundaries by linear interpolation. Parts of a phase
before the first or after the last sample are not extrapolated (the NVML and RAPL samplers take
a sample at start and at stop, so the curve spans the run). The integration lives in pure
functions over arrays (:func:`integrate`, :func:`counter_delta`, …) so it can be checked by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MJ_PER_KWH = 3.6e9  # millijoules in one kWh
WS_PER_KWH = 3.6e6  # joules (W·s) in one kWh
UJ_PER_KWH = 3.6e12  # microjoules in one kWh


# ---------------------------------------------------------------------------------------------
# Pure integration helpers (times in seconds, any common origin)
# ---------------------------------------------------------------------------------------------

def merge_intervals(intervals: Iterable[Sequence[float]]) -> list[tuple[float, float]]:
    """Sorted union of ``[a, b)`` intervals; empty or reversed ones are dropped."""
    ivs = sorted((float(a), float(b)) for a, b in intervals if b > a)
    out: list[tuple[float, float]] = []
    for a, b in ivs:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def interval_seconds(intervals: Iterable[Sequence[float]]) -> float:
    """Total length of the union of the intervals."""
    return float(sum(b - a for a, b in merge_intervals(intervals)))


def _clean(ts, ys) -> tuple[np.ndarray, np.ndarray]:
    ts = np.asarray(ts, dtype=float)
    ys = np.asarray(ys, dtype=float)
    ok = np.isfinite(ts) & np.isfinite(ys)
    ts, ys = ts[ok], ys[ok]
    order = np.argsort(ts, kind="stable")
    return ts[order], ys[order]


def _trapezoid(t: np.ndarray, y: np.ndarray) -> float:
    if t.size < 2:
        return 0.0
    return float(np.sum((y[1:] + y[:-1]) * 0.5 * np.diff(t)))


def _clip(ts: np.ndarray, intervals) -> list[tuple[float, float]]:
    out = []
    for a, b in merge_intervals(intervals):
        a, b = max(a, ts[0]), min(b, ts[-1])
        if b > a:
            out.append((a, b))
    return out


def integrate(ts, ys, intervals: Iterable[Sequence[float]] | None = None) -> float:
    """Trapezoid ∫ y dt over the sampled curve (NaN samples dropped).

    With ``intervals``, only the part of the curve inside their union counts: the trapezoids
    are clipped at each boundary, the value there found by linear interpolation. Parts of an
    interval outside ``[ts[0], ts[-1]]`` contribute nothing. Fewer than 2 samples → 0.0.
    """
    ts, ys = _clean(ts, ys)
    if ts.size < 2:
        return 0.0
    if intervals is None:
        return _trapezoid(ts, ys)
    total = 0.0
    for a, b in _clip(ts, intervals):
        i = int(np.searchsorted(ts, a, side="right"))
        j = int(np.searchsorted(ts, b, side="left"))
        t = np.concatenate(([a], ts[i:j], [b]))
        y = np.concatenate(([np.interp(a, ts, ys)], ys[i:j], [np.interp(b, ts, ys)]))
        total += _trapezoid(t, y)
    return float(total)


def counter_delta(ts, cs, intervals: Iterable[Sequence[float]] | None = None) -> float:
    """Increase of a cumulative counter: last − first, or Σ over intervals of C(b) − C(a) with
    C linearly interpolated at the (clipped) boundaries. Fewer than 2 samples → 0.0."""
    ts, cs = _clean(ts, cs)
    if ts.size < 2:
        return 0.0
    if intervals is None:
        return float(cs[-1] - cs[0])
    return float(sum(np.interp(b, ts, cs) - np.interp(a, ts, cs) for a, b in _clip(ts, intervals)))


def power_kwh(ts, power_w, intervals=None) -> float:
    """∫ P dt in kWh (P in W, t in s)."""
    return integrate(ts, power_w, intervals) / WS_PER_KWH


def counter_kwh(ts, counter_mj, intervals=None) -> float:
    """Energy-counter increase in kWh (counter in mJ)."""
    return counter_delta(ts, counter_mj, intervals) / MJ_PER_KWH


def util_kwh(ts, util_pct, p0_kw: float, intervals=None) -> float:
    """READ eq. 15 with the trapezoid rule: ``p0_kw · ∫ u/100 dt[s] / 3600``."""
    return float(p0_kw) * integrate(ts, np.asarray(util_pct, dtype=float) / 100.0, intervals) / 3600.0


def read_eq16_kwh(util_samples_pct: Iterable[float], p0_kw: float = 0.25) -> float:
    """READ eq. 16 as printed: ``U · p0 / 6000`` with ``U`` the sum of per-minute percent samples."""
    return float(sum(util_samples_pct)) * float(p0_kw) / 6000.0
