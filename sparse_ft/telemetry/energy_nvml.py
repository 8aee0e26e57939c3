"""NVML sampler (``pynvml`` from nvidia-ml-py): one background thread polls every GPU.

Functions are looked up on the ``pynvml`` module at call time, so tests can monkeypatch them.
Per-field NVML errors give an empty field for that sample (counted, last one kept as the
``reason``); ``NVMLError_NotSupported`` from the energy counter (pre-Volta GPUs) turns the
counter off for that GPU.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


@dataclass
class NvmlGpu:
    index: int
    handle: object
    name: str
    power_limit_w: float | None
    has_counter: bool = True


@dataclass
class NvmlRow:
    index: int
    name: str
    util_pct: float | None
    power_w: float | None
    mem_used_mib: float | None
    counter_mj: float | None
    power_limit_w: float | None = None


def _pynvml():
    import pynvml  # noqa: PLC0415 - optional at import time of the package

    return pynvml


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _name(raw) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


@dataclass
class NvmlSampler:
    sink: Callable[[float, NvmlRow], None]
    clock: Callable[[], float]
    interval_s: float
    indices: list[int] | None = None  # None = all GPUs NVML sees
    gpus: list[NvmlGpu] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None
    on_tick: Callable[[], None] | None = None  # extra periodic work (RAPL polling)
    _initialised: bool = False
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def probe(self) -> tuple[bool, str | None]:
        """nvmlInit + device handles. (False, reason) when NVML is unusable or sees no GPU."""
        try:
            nv = _pynvml()
        except Exception as e:  # noqa: BLE001
            return False, f"NVML: pynvml not importable ({_err(e)})"
        try:
            nv.nvmlInit()
            self._initialised = True
            count = int(nv.nvmlDeviceGetCount())
        except Exception as e:  # noqa: BLE001
            self.shutdown()
            return False, f"NVML: {_err(e)}"
        wanted = list(range(count)) if self.indices is None else [i for i in self.indices if 0 <= i < count]
        if self.indices is not None and len(wanted) < len(self.indices):
            log.warning("energy: GPU indices %s not all present (NVML sees %d)", self.indices, count)
        if not wanted:
            self.shutdown()
            return False, f"NVML: no GPU to sample ({count} device(s), selected {self.indices})"
        for i in wanted:
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
            except Exception as e:  # noqa: BLE001
                self._note(e)
                continue
            try:
                name = _name(nv.nvmlDeviceGetName(h))
            except Exception as e:  # noqa: BLE001
                self._note(e)
                name = f"GPU{i}"
            try:
                limit = float(nv.nvmlDeviceGetEnforcedPowerLimit(h)) / 1000.0
            except Exception as e:  # noqa: BLE001
                self._note(e)
                limit = None
            self.gpus.append(NvmlGpu(i, h, name, limit))
        if not self.gpus:
            self.shutdown()
            return False, f"NVML: no usable GPU handle ({self.last_error})"
        return True, None

    def _note(self, e: BaseException) -> None:
        self.errors += 1
        self.last_error = _err(e)
        if self.errors <= 3:
            log.warning("energy: NVML error: %s", self.last_error)

    def sample_once(self) -> None:
        nv = _pynvml()
        not_supported = getattr(nv, "NVMLError_NotSupported", ())
        for g in self.gpus:
            t = self.clock()
            util = power = mem = counter = None
            try:
                util = float(nv.nvmlDeviceGetUtilizationRates(g.handle).gpu)
            except Exception as e:  # noqa: BLE001
                self._note(e)
            try:
                power = float(nv.nvmlDeviceGetPowerUsage(g.handle)) / 1000.0
            except Exception as e:  # noqa: BLE001
                self._note(e)
            try:
                mem = float(nv.nvmlDeviceGetMemoryInfo(g.handle).used) / 2**20
            except Exception as e:  # noqa: BLE001
                self._note(e)
            if g.has_counter:
                try:
                    counter = float(nv.nvmlDeviceGetTotalEnergyConsumption(g.handle))
                except not_supported:
                    g.has_counter = False
                    log.info("energy: GPU %d has no total-energy counter (pre-Volta?)", g.index)
                except Exception as e:  # noqa: BLE001
                    self._note(e)
            self.sink(t, NvmlRow(g.index, g.name, util, power, mem, counter, g.power_limit_w))

    def _loop(self) -> None:
        next_t = time.monotonic()  # scheduling uses the real clock; timestamps use self.clock
        while not self._stop.is_set():
            try:
                self.sample_once()
                if self.on_tick is not None:
                    self.on_tick()
            except Exception as e:  # noqa: BLE001 - never let the thread die with an exception
                self._note(e)
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:  # fell behind (slow NVML): do not burst to catch up
                next_t = now
            self._stop.wait(max(0.0, next_t - now))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="energy-nvml", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, take one last sample (so the curve reaches the stop time), shut down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        if self._initialised and (self._thread is None or not self._thread.is_alive()):
            try:
                self.sample_once()
            except Exception as e:  # noqa: BLE001
                self._note(e)
        self.shutdown()

    def shutdown(self) -> None:
        if self._initialised:
            self._initialised = False
            try:
                _pynvml().nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
