"""GPU/CPU energy telemetry: ``energy.csv`` (raw samples) and ``summary.json → energy``.

Usage (the entry point does exactly this)::

    mon = EnergyMonitor(cfg.energy, run_dir)
    mon.start()                      # one long-lived background sampler
    with mon.phase("train"): ...     # phases may repeat; their figures are summed
    with mon.phase("eval"): ...
    summary["energy"] = mon.stop()   # idempotent; never raises because of the telemetry source

Backends (``energy.backend``): ``nvml`` (pynvml thread), ``nvidia_smi`` (ONE
``nvidia-smi --query-gpu=... -lms <ms>`` child read line by line), ``auto`` (NVML if it inits
and sees a GPU, else nvidia-smi if on PATH and it lists a GPU, else CPU package energy from
RAPL) and ``off``. Whenever RAPL is readable, ``cpu_kwh`` is reported as well (read at start,
stop, phase boundaries and polled from the sampler so counter wraps are seen).

The kWh figures (counter, power integral, READ's utilisation estimate) and their integration
live in :mod:`sparse_ft.telemetry.kwh`, the summary block built from the samples in
:mod:`sparse_ft.telemetry.energy_summary`; the `energy` options in :mod:`sparse_ft.telemetry.energy_config`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable

from .energy_config import energy_options, selected_gpus
from .energy_nvml import NvmlRow, NvmlSampler
from .energy_smi import SmiRow, SmiSampler, probe_smi
from .energy_summary import Series, empty_summary, energy_summary
from .rapl import RaplReader

log = logging.getLogger(__name__)

CSV_COLUMNS = ["t_s", "gpu", "name", "util_pct", "power_w", "mem_used_mib", "energy_counter_mj", "phase"]
FLUSH_EVERY_S = 5.0


def _fmt(v: float | int | str | None, nd: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    v = float(v)
    if not math.isfinite(v):
        return ""
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.{nd}f}".rstrip("0").rstrip(".")


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


# ---------------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------------

class EnergyMonitor:
    """Energy telemetry for one run; see the module docstring.

    ``cfg``: the ``energy`` config (DictConfig, mapping or None for defaults).
    ``rapl_root``: powercap root (default :data:`sparse_ft.telemetry.rapl.RAPL_ROOT`).
    ``clock``: monotonic clock in seconds (tests may inject one). ``smi_exe``: nvidia-smi path
    (default: looked up on PATH at start).
    """

    def __init__(self, cfg: Any, run_dir: os.PathLike | str, *, rapl_root: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.monotonic, smi_exe: str | None = None):
        opts = energy_options(cfg)
        self.backend_requested: str = opts["backend"]
        self.interval_s: float = opts["interval_s"]
        self.p0_kw: float | None = opts["p0_kw"]
        self.gpus_cfg: list[int] | None = opts["gpus"]
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "energy.csv"
        self.backend: str | None = None
        self._rapl_root = rapl_root
        self._clock = clock
        self._smi_exe = smi_exe
        self._t0: float | None = None
        self._lock = threading.RLock()
        self._series: dict[int, Series] = {}
        self._cpu_t = array("d")
        self._cpu_uj = array("d")
        self._cpu_last_poll = -math.inf
        self._cpu_domains = ""
        self._intervals: dict[str, list[tuple[float, float]]] = {}
        self._stack: list[tuple[str, float]] = []
        self._reasons: list[str] = []
        self._sampler: NvmlSampler | SmiSampler | None = None
        self._rapl: RaplReader | None = None
        self._rapl_thread: threading.Thread | None = None
        self._rapl_stop = threading.Event()
        self._csv_file = None
        self._csv = None
        self._last_flush = 0.0
        self._samples = 0
        self._garbage_lines = 0
        self._started = False
        self._summary: dict | None = None

    # -- clock ---------------------------------------------------------------------------------
    def _now(self) -> float:
        """Seconds since the monitor started (monotonic)."""
        if self._t0 is None:
            self._t0 = self._clock()
        return self._clock() - self._t0

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "EnergyMonitor":
        self.start()
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        """Start the (single) background sampler. Never raises because of the telemetry source."""
        if self._started or self._summary is not None:
            return
        self._started = True
        self._now()
        if self.backend_requested == "off":
            return
        try:
            self._start()
        except Exception as e:  # noqa: BLE001 - telemetry must never take a run down
            log.warning("energy: monitor failed to start: %s", e, exc_info=True)
            self._reasons.append(f"energy monitor failed to start: {type(e).__name__}: {e}")
            self._halt_samplers()
            self.backend = None

    def _start(self) -> None:
        self._open_csv()
        req = self.backend_requested
        indices = selected_gpus(self.gpus_cfg)
        why: list[str] = []
        if indices == []:
            why.append(f"no GPU selected (energy.gpus={self.gpus_cfg}, "
                       f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")

        rapl = RaplReader(self._rapl_root)
        if rapl.open():
            self._rapl = rapl
            self._cpu_domains = "+".join(rapl.domains)
            self._cpu_read()  # the first reading, at t≈0

        if indices != [] and req in ("auto", "nvml"):
            s = NvmlSampler(self._on_nvml, self._now, self.interval_s, indices)
            ok, err = s.probe()
            if ok:
                self.backend, self._sampler = "nvml", s
                for g in s.gpus:
                    ser = self._get_series(g.index)
                    ser.name, ser.power_limit_w = g.name, g.power_limit_w
            else:
                why.append(err)
        if self.backend is None and indices != [] and req in ("auto", "nvidia_smi"):
            exe = self._smi_exe or shutil.which("nvidia-smi")
            if not exe:
                why.append("nvidia-smi not on PATH")
            else:
                ok, msg = probe_smi(exe, indices) if req == "auto" else (True, None)
                if not ok:
                    why.append(msg)
                else:
                    s = SmiSampler(self._on_smi, self._now, self.interval_s, indices, exe=exe)
                    s.on_tick = self._cpu_poll
                    ok, err = s.start()
                    if ok:
                        self.backend, self._sampler = "nvidia_smi", s
                    else:
                        why.append(err)

        if self.backend == "nvml":
            self._sampler.on_tick = self._cpu_poll
            self._sampler.start()
        elif self.backend is None:
            if req == "auto" and self._rapl is not None:
                self.backend = "rapl"
                log.info("energy: no GPU (%s); measuring CPU package energy via RAPL", "; ".join(why))
                self._rapl_thread = threading.Thread(target=self._rapl_loop, name="energy-rapl", daemon=True)
                self._rapl_thread.start()
            else:
                gpu_part = "; ".join(w for w in why if w)
                if req == "auto":
                    reason = f"no GPU ({gpu_part}) and RAPL not readable: {rapl.error}"
                else:
                    reason = f"energy.backend={req}: {gpu_part}"
                self._reasons.append(reason)
                log.warning("energy: telemetry unavailable: %s", reason)
        if self.backend is not None:
            log.info("energy: backend=%s interval=%gs -> %s", self.backend, self.interval_s, self.csv_path)

    def _halt_samplers(self) -> None:
        s, self._sampler = self._sampler, None
        if s is not None:
            try:
                s.stop()
                self._garbage_lines += int(getattr(s, "garbage_lines", 0))
            except Exception as e:  # noqa: BLE001
                self._reasons.append(f"stopping the {self.backend} sampler failed: {e}")
        if self._rapl_thread is not None:
            self._rapl_stop.set()
            self._rapl_thread.join(timeout=5.0)
            self._rapl_thread = None

    def stop(self) -> dict:
        """Stop the sampler, close ``energy.csv`` and return the summary block (idempotent)."""
        if self._summary is not None:
            return self._summary
        try:
            self._stop()
        except Exception as e:  # noqa: BLE001
            log.warning("energy: error while stopping: %s", e, exc_info=True)
            self._reasons.append(f"energy monitor failed to stop cleanly: {type(e).__name__}: {e}")
        try:
            summary = self._build_summary()
        except Exception as e:  # noqa: BLE001
            log.warning("energy: could not build the summary: %s", e, exc_info=True)
            summary = self._empty_summary(f"energy summary failed: {type(e).__name__}: {e}")
        self._summary = summary
        return summary

    def _stop(self) -> None:
        if not self._started:
            if self.backend_requested != "off":
                self._reasons.append("energy monitor was never started")
            return
        t_end = self._now()
        for name, t in self._stack:  # close phases left open (an exception escaped, say)
            self._intervals.setdefault(name, []).append((t, t_end))
        self._stack.clear()
        sampler = self._sampler
        self._halt_samplers()
        if self._rapl is not None:
            self._cpu_read(write_row=self.backend == "rapl")  # the last reading, at stop
        if isinstance(sampler, SmiSampler) and sampler.reason:
            self._reasons.append(sampler.reason)
        if isinstance(sampler, NvmlSampler) and sampler.errors:
            self._reasons.append(f"NVML: {sampler.errors} error(s) while sampling (last: {sampler.last_error})")
        if self._rapl is not None and self._rapl.read_errors:
            self._reasons.append(f"RAPL: {self._rapl.read_errors} read error(s) (last: {self._rapl.error})")
        self._close_csv()

    # -- phases --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str):
        """Mark ``[start, end)`` of a named phase; repeated phases are summed."""
        token = None
        try:
            if self._summary is None:
                t = self._boundary()
                token = (str(name), t)
                self._stack.append(token)
        except Exception as e:  # noqa: BLE001
            log.warning("energy: phase %r start not recorded: %s", name, e)
        try:
            yield self
        finally:
            try:
                if token is not None and self._summary is None and token in self._stack:
                    t = self._boundary()
                    self._stack.remove(token)
                    self._intervals.setdefault(token[0], []).append((token[1], t))
            except Exception as e:  # noqa: BLE001
                log.warning("energy: phase %r end not recorded: %s", name, e)

    def _boundary(self) -> float:
        """Time of a phase boundary; with RAPL, a reading taken at exactly that time."""
        if self._rapl is not None and self._started:
            return self._cpu_read()
        return self._now()

    def _current_phase(self) -> str:
        try:  # read from sampler threads while the main thread may pop: no check-then-index
            return self._stack[-1][0]
        except IndexError:
            return ""

    # -- sinks (called from sampler threads) -----------------------------------------------------
    def _get_series(self, index: int) -> Series:
        s = self._series.get(index)
        if s is None:
            s = self._series[index] = Series(index)
        return s

    def _add(self, t: float, gpu: int, name: str, util, power, mem, counter, limit) -> None:
        with self._lock:
            s = self._get_series(gpu)
            if name:
                s.name = name
            if limit is not None:
                s.power_limit_w = float(limit)
            s.t.append(float(t))
            s.util.append(_nan(util))
            s.power.append(_nan(power))
            s.counter.append(_nan(counter))
            self._samples += 1
            self._write_row([_fmt(t, 6), str(gpu), name, _fmt(util), _fmt(power), _fmt(mem),
                             _fmt(counter), self._current_phase()])

    def _on_nvml(self, t: float, r: NvmlRow) -> None:
        self._add(t, r.index, r.name, r.util_pct, r.power_w, r.mem_used_mib, r.counter_mj, r.power_limit_w)

    def _on_smi(self, t: float, r: SmiRow) -> None:
        self._add(t, r.index, r.name, r.util_pct, r.power_w, r.mem_used_mib, None, r.power_limit_w)

    # -- RAPL ------------------------------------------------------------------------------------
    def _cpu_read(self, write_row: bool = False) -> float:
        """One RAPL reading (cumulative µJ) stamped with the current time; returns that time."""
        with self._lock:
            t = self._now()
            uj = self._rapl.read_uj()
            prev_t = self._cpu_t[-1] if self._cpu_t else None
            prev_uj = self._cpu_uj[-1] if self._cpu_uj else None
            self._cpu_t.append(t)
            self._cpu_uj.append(uj)
            self._cpu_last_poll = t
            if write_row:
                power = None
                if prev_t is not None and t > prev_t:
                    power = (uj - prev_uj) / 1e6 / (t - prev_t)
                self._samples += 1
                self._write_row([_fmt(t, 6), "cpu", f"rapl:{self._cpu_domains}", "", _fmt(power), "",
                                 _fmt(uj / 1000.0), self._current_phase()])
            return t

    def _cpu_poll(self) -> None:
        """Rate-limited RAPL reading from a GPU sampler thread (catches counter wraps)."""
        if self._rapl is not None and self._now() - self._cpu_last_poll >= self.interval_s:
            try:
                self._cpu_read()
            except Exception as e:  # noqa: BLE001
                log.debug("energy: RAPL poll failed: %s", e)

    def _rapl_loop(self) -> None:
        next_t = time.monotonic()
        while not self._rapl_stop.is_set():
            try:
                self._cpu_read(write_row=True)
            except Exception as e:  # noqa: BLE001
                log.debug("energy: RAPL read failed: %s", e)
            next_t = max(next_t + self.interval_s, time.monotonic())
            self._rapl_stop.wait(max(0.0, next_t - time.monotonic()))

    # -- CSV ------------------------------------------------------------------------------------
    def _open_csv(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._csv_file = open(self.csv_path, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._csv_file)
            self._csv.writerow(CSV_COLUMNS)
            self._csv_file.flush()
            self._last_flush = time.monotonic()
        except OSError as e:
            log.warning("energy: cannot write %s: %s", self.csv_path, e)
            self._reasons.append(f"energy.csv not written: {e}")
            self._csv_file = self._csv = None

    def _write_row(self, row: list[str]) -> None:
        if self._csv is None:
            return
        try:
            self._csv.writerow(row)
            if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._csv_file.flush()
                self._last_flush = time.monotonic()
        except (OSError, ValueError) as e:  # disk full / closed file: keep sampling in memory
            log.warning("energy: writing %s failed: %s", self.csv_path, e)
            self._csv = None

    def _close_csv(self) -> None:
        with self._lock:
            f, self._csv_file, self._csv = self._csv_file, None, None
            if f is not None:
                try:
                    f.close()
                except OSError as e:
                    self._reasons.append(f"energy.csv close failed: {e}")

    # -- summary --------------------------------------------------------------------------------
    def _empty_summary(self, reason: str | None) -> dict:
        return empty_summary(reason, self.interval_s, self.p0_kw)

    def _build_summary(self) -> dict:
        return energy_summary(
            requested=self.backend_requested, backend=self.backend, interval_s=self.interval_s, p0_kw=self.p0_kw,
            series=self._series, samples=self._samples, garbage_lines=self._garbage_lines, intervals=self._intervals,
            cpu=(self._cpu_t, self._cpu_uj) if self._rapl is not None else None, reasons=self._reasons,
        )
