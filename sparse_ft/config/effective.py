"""The composed config settled before config.yaml records it (run.py and sweep_plan alike)."""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from ..core.errors import ConfigError

JOBS = ("train", "evaluate", "compress")


def effective_config(cfg: DictConfig) -> None:
    """Settle everything that is decided at start-up into `cfg` before config.yaml records it:
    the source run's groups (evaluate/compress) and local SGD's per-worker batch size."""
    job = cfg.get("job", "train")
    if job not in JOBS:
        raise ConfigError("job", f"{job!r} is not one of {', '.join(JOBS)}")
    if job != "train":
        from .source import adopt_source

        adopt_source(cfg)
        return
    dist_cfg = cfg.get("distributed")
    if dist_cfg is not None and dist_cfg.get("mode", "none") == "local_sgd" and dist_cfg.get("total_batch_size") is not None:
        from ..train import distributed as D  # here, not at the top: jobs.hydra_callbacks must not pull torch

        world = D.env_info().world_size  # the same total batch for every number of workers
        total = int(dist_cfg.total_batch_size)
        if total % world:
            raise ConfigError("distributed.total_batch_size", f"{total} is not divisible by the {world} workers")
        with open_dict(cfg):
            cfg.trainer.batch_size = total // world
