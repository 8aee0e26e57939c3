"""What a run's position is made of: the step counters (`TrainState`), every RNG, the seeded data
order of an epoch, the step budget, and the checkpoint schedule. A checkpoint holds these, so a
resumed CPU run continues bit-identically."""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, field

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) only, so a run can
    resume mid-epoch by skipping the first examples of this order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def parse_every(value) -> tuple[int, float]:
    """`trainer.checkpoint_every`: an int = optimizer steps, "<n>m"/"<n>min" = minutes, 0/null = never."""
    if value in (None, 0, "0", "never"):
        return 0, 0.0
    if isinstance(value, int) and value > 0:
        return value, 0.0
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|minutes?)\s*", str(value))
    if m:
        return 0, float(m.group(1)) * 60.0
    raise ValueError(f"trainer.checkpoint_every={value!r}: use a number of steps, '<n>m' for minutes, or 0")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    stage: int = 0  # index into the method's stages(); `step` counts within the stage
    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0  # micro-batches of the current epoch already consumed (resume point)
    samples: int = 0
    tokens: int = 0
    best_main: float = -math.inf
    best_step: int = -1
    best_metrics: dict = field(default_factory=dict)
    last_eval_step: int = -1
    loss_sum: float = 0.0  # training loss since the last log line (kept so a resumed log is identical)
    loss_count: int = 0


# what differs between the ranks of a local-SGD run between two syncs: a checkpoint written at a
# sync round keeps one copy per rank (trainer_state["workers"][rank])
WORKER_KEYS = ("state", "optimizer", "rng")


def clone_tree(obj):
    """A copy of nested dicts/lists/tuples in which every tensor is a detached clone (optimizer
    and method state dicts hold the live tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(clone_tree(v) for v in obj)
    return copy.deepcopy(obj)


def steps_per_epoch(cfg, train_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch of `train_size` examples (per rank, with accumulation)."""
    per_rank = math.ceil(train_size / world_size)
    micro = math.ceil(per_rank / cfg.batch_size)
    return math.ceil(micro / cfg.grad_accum)


def total_steps(cfg, train_size: int, world_size: int = 1) -> int:
    return int(cfg.max_steps) if cfg.max_steps > 0 else int(cfg.epochs) * steps_per_epoch(cfg, train_size, world_size)
