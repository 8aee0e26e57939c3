"""telemetry.resources: per-phase peak memory on CPU, and the share the job itself added."""

from __future__ import annotations

import torch

from sparse_ft.telemetry.resources import ResourceMonitor


def test_cpu_peaks_per_phase_and_above_the_rss_at_job_start():
    mon = ResourceMonitor(torch.device("cpu"))
    with mon.phase("small"):
        torch.ones(1 << 18).sum()  # 1 MiB
    with mon.phase("big"):
        x = torch.ones(1 << 26)  # 256 MiB, touched
        x.add_(1)
        del x
    block = mon.memory_block()
    above = block["peak_bytes_above_start"]
    assert block["rss_at_start_bytes"] > 0
    assert above["big"] >= 200 * (1 << 20)  # the tensor shows in its own phase...
    assert above["small"] < above["big"]    # ...and not in the phase before it
    assert above["big"] == block["peak_rss_bytes"]["big"] - block["rss_at_start_bytes"]


def test_heap_an_earlier_phase_freed_does_not_count_in_the_next_phase_peak():
    # glibc keeps freed small blocks resident: without release_freed_memory at the phase start the
    # "after" phase measured ~345 MiB here (LST's Fisher pass inflated its train phase the same way)
    mon = ResourceMonitor(torch.device("cpu"))
    with mon.phase("held"):
        xs = [torch.ones(512) for _ in range(150_000)]  # 2 KiB each: ~300 MiB of small heap blocks
        del xs
    with mon.phase("after"):
        pass
    above = mon.memory_block()["peak_bytes_above_start"]
    assert above["held"] >= 200 * (1 << 20)
    assert above["after"] < above["held"] / 4
