"""Wall time and peak memory per phase ("setup", "mask", "train", "eval", ...).

Phases may repeat (evaluation runs many times): seconds add up, peaks take the maximum.
CPU peak memory is the process's peak resident set size, reset at each phase start through
/proc/self/clear_refs where the kernel allows it (else the peak since process start, flagged),
after freed heap pages are handed back (`release_freed_memory`: glibc keeps them resident).
GPU peak memory is `torch.cuda.max_memory_allocated`, reset at each phase start — which also
keeps multirun jobs, which share one process, from seeing each other's peaks.
On CPU, `peak_bytes_above_start` is each phase's peak RSS minus the RSS when the job started (the
interpreter and libraries, nothing built yet): what the job itself added, the figure closest to a
GPU allocator's peak. In a multirun process, memory an earlier job freed but the allocator kept
is part of the start.
"""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS (VmHWM), Linux >= 4.0
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak), None where it is not readable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_bytes() -> int | None:
    return _status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def release_freed_memory(device: torch.device | None = None) -> None:
    """Hand memory the job no longer references back before a phase is measured: a garbage
    collection, CUDA's cached blocks, and on glibc `malloc_trim(0)` (freed heap pages otherwise
    stay in the process's resident set and in the next phase's peak RSS)."""
    import ctypes
    import gc

    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class ResourceMonitor:
    def __init__(self, device: torch.device, on_phase=None):
        self.device = device
        self.on_phase = on_phase  # called at each phase start (measurement.JobRegistry.sample)
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self.peak_rss_bytes: dict[str, int] = {}
        self.rss_reset_works = True
        # what the process holds before the job builds anything (Python, torch, libraries): on
        # CPU a peak RSS includes it, a GPU allocator's peak does not; read, like every phase's
        # start, after freed heap pages are handed back (else a phase could start below it)
        if device.type != "cuda":
            release_freed_memory()
        self.rss_at_start = _rss_bytes()

    @contextlib.contextmanager
    def phase(self, name: str):
        cuda = self.device.type == "cuda"
        if self.on_phase is not None:
            self.on_phase()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:  # the peak RSS restarts from what is live: heap pages an earlier phase freed (LST's Fisher
            # pass over the whole backbone) would otherwise stay resident and count in this phase's peak
            release_freed_memory()
        self.rss_reset_works &= _reset_peak_rss()
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
                self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), int(peak))
            rss = _peak_rss_bytes()
            self.peak_rss_bytes[name] = max(self.peak_rss_bytes.get(name, 0), rss)
            if not cuda:
                self.peak_bytes[name] = self.peak_rss_bytes[name]
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def memory_block(self) -> dict:
        block = {
            "device": self.device.type,
            "measure": "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "peak RSS (VmHWM)",
            "peak_bytes": dict(self.peak_bytes),
            "peak_rss_bytes": dict(self.peak_rss_bytes),
        }
        if self.device.type != "cuda" and self.rss_at_start is not None:
            block["rss_at_start_bytes"] = self.rss_at_start
            block["peak_bytes_above_start"] = {k: max(0, v - self.rss_at_start) for k, v in self.peak_rss_bytes.items()}
        if not self.rss_reset_works:
            block["note"] = "peak RSS could not be reset per phase: figures are peaks since process start"
        return block
