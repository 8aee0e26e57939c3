"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

One process group per run, NCCL on GPU and gloo on CPU; every multi-process feature (DDP,
local-SGD workers) reuses it. Without torchrun's variables everything here is a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device", f"{name!r}, but no CUDA device is available here (use trainer.device=auto or cpu)")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("trainer.device", f"{name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s) (cuda:0..)")
    return device


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def env_info() -> DistInfo:
    if not launched_by_torchrun():
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def setup(device_name: str, timeout_s: float = 300.0) -> tuple[DistInfo, torch.device]:
    """Initialise the process group (if torchrun started us) and pick this rank's device."""

    info = env_info()
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # a dead peer must fail the job within the timeout instead of hanging it
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        log.info("torch.distributed: rank %d/%d, backend %s, device %s", info.rank, info.world_size, backend, device)
    return info, device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(order: list[int], info: DistInfo, pad: bool = True) -> list[int]:
    """This rank's part of a global order: disjoint strided shards (DistributedSampler's scheme,
    padded by wrapping so every rank runs the same number of steps)."""
    if info.world_size == 1:
        return order
    if pad and len(order) % info.world_size:
        extra = info.world_size - len(order) % info.world_size
        order = order + order[:extra]
    return order[info.rank :: info.world_size]


def any_flag(flags: list[bool], device: torch.device) -> list[bool]:
    """Logical OR of each flag over all ranks (one small all-reduce)."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_scalar(value: float, device: torch.device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def gather_objects(obj):
    """Every rank's `obj`, in rank order (evaluation predictions)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj) -> list | None:
    """Every rank's `obj` on rank 0, in rank order (None on the other ranks); [obj] without a
    process group. A local-SGD checkpoint collects each worker's optimizer state this way."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
