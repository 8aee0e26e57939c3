"""The energy group: step time with the energy sampler running vs without."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..telemetry.energy import EnergyMonitor
from .harness import REPO, MiniLMOnMRPC, compose


def _time_block(step_fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step_fn()
    return time.perf_counter() - t


def sampler_overhead_ratio(step_fn: Callable[[], object], steps: int = 30, interval_s: float = 0.05,
                           fake_smi_dir: str | os.PathLike | None = None, blocks: int = 6) -> dict:
    """Time ``step_fn()`` ``steps`` times without a monitor and ``steps`` times with one running.

    The steps are split into ``blocks`` pairs of (off, on) blocks whose order alternates
    (off-on, on-off, …) to cancel drift. Each "on" block runs inside its own started monitor
    (start/stop are outside the timed region, after the first sample has arrived), so only the
    steady-state sampler cost is measured. ``fake_smi_dir``: a folder holding a fake
    ``nvidia-smi`` (forces ``backend=nvidia_smi``); else ``backend=auto``.

    Returns ``{"energy_sampler_overhead_ratio": t_on / t_off, "energy_sampler_backend": ...}``.
    """
    steps = max(1, int(steps))
    blocks = max(1, min(int(blocks), steps))
    sizes = [steps // blocks + (1 if k < steps % blocks else 0) for k in range(blocks)]
    cfg = {"backend": "nvidia_smi" if fake_smi_dir is not None else "auto", "interval_s": interval_s}
    smi_exe = str(Path(fake_smi_dir) / "nvidia-smi") if fake_smi_dir is not None else None
    step_fn()  # warm-up (allocations, lazy init)
    t_off = t_on = 0.0
    backend = None
    with tempfile.TemporaryDirectory(prefix="energy-bench-") as tmp:
        for k, n in enumerate(sizes):
            order = ("off", "on") if k % 2 == 0 else ("on", "off")
            for what in order:
                if what == "off":
                    t_off += _time_block(step_fn, n)
                    continue
                mon = EnergyMonitor(cfg, Path(tmp) / f"b{k}", smi_exe=smi_exe)
                mon.start()
                try:
                    t_on += _time_block(step_fn, n)
                finally:
                    summary = mon.stop()
                backend = summary.get("backend") or backend
    return {
        "energy_sampler_overhead_ratio": (t_on / t_off) if t_off > 0 else float("nan"),
        "energy_sampler_backend": backend,
    }


def bench_energy(args) -> dict:
    setup = MiniLMOnMRPC(args.glue_dir, args.batch_size, 1)
    module = setup.bundle.module
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    batch = setup.bundle.collate([setup.features["train"][i] for i in range(args.batch_size)])

    def step():
        loss = setup.bundle.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fake = REPO / "tests" / "fake_bin"
    interval = float(compose([]).energy.interval_s)  # the configured default sampling period
    out = sampler_overhead_ratio(step, steps=max(args.steps, 30), interval_s=interval, fake_smi_dir=str(fake) if args.fake_smi else None)
    out["energy_sampler_interval_s"] = interval
    return out


