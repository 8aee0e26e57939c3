"""The `energy` config group: its defaults and checks, and which GPUs to sample."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sparse_ft.telemetry.energy")

BACKENDS = ("auto", "nvml", "nvidia_smi", "off")
DEFAULTS: dict[str, Any] = {"backend": "auto", "interval_s": 1.0, "p0_kw": None, "gpus": None}


def energy_options(cfg: Any) -> dict[str, Any]:
    """Validated ``energy`` options (DictConfig, mapping or None). ValueError names the key."""
    def get(key):
        if cfg is None:
            return DEFAULTS[key]
        if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
            return cfg.get(key, DEFAULTS[key])
        return getattr(cfg, key, DEFAULTS[key])

    backend = get("backend")
    if backend is False:  # YAML 1.1 reads a bare `off` as false
        backend = "off"
    backend = "auto" if backend is None else str(backend).strip().lower().replace("-", "_")
    if backend not in BACKENDS:
        raise ValueError(f"energy.backend={get('backend')!r}: expected one of {', '.join(BACKENDS)}")
    try:
        interval = float(get("interval_s"))
    except (TypeError, ValueError):
        raise ValueError(f"energy.interval_s={get('interval_s')!r}: expected seconds > 0") from None
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"energy.interval_s={interval!r}: expected seconds > 0")
    p0 = get("p0_kw")
    if p0 is not None:
        try:
            p0 = float(p0)
        except (TypeError, ValueError):
            raise ValueError(f"energy.p0_kw={p0!r}: expected kW > 0 or null") from None
        if not (p0 > 0 and math.isfinite(p0)):
            raise ValueError(f"energy.p0_kw={p0!r}: expected kW > 0 or null")
    gpus = get("gpus")
    if gpus is not None:
        if isinstance(gpus, str):
            gpus = [g for g in gpus.replace(" ", "").split(",") if g]
        elif isinstance(gpus, int):
            gpus = [gpus]
        try:
            gpus = [int(g) for g in gpus]
        except (TypeError, ValueError):
            raise ValueError(f"energy.gpus={get('gpus')!r}: expected null or a list of GPU indices") from None
        if any(g < 0 for g in gpus):
            raise ValueError(f"energy.gpus={gpus!r}: indices must be >= 0")
    return {"backend": backend, "interval_s": interval, "p0_kw": p0, "gpus": gpus}


def selected_gpus(cfg_gpus: list[int] | None) -> list[int] | None:
    """GPU indices to sample; None = all. ``energy.gpus`` wins; else CUDA_VISIBLE_DEVICES when
    it holds integer ids (UUID/MIG entries cannot be mapped → all GPUs, with a log line).
    As in CUDA, the list ends at the first negative id (``-1`` or ``""`` = no GPU)."""
    if cfg_gpus is not None:
        return list(cfg_gpus)
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return None
    ids: list[int] = []
    for item in cvd.split(","):
        item = item.strip()
        if not item:
            break
        try:
            i = int(item)
        except ValueError:
            log.info("energy: CUDA_VISIBLE_DEVICES=%r is not integer ids; sampling all GPUs", cvd)
            return None
        if i < 0:
            break
        ids.append(i)
    return ids
