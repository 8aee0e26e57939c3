"""Task data and the model bundle, built the same way for every job (train, evaluate, compress)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from ..models.bundle import ModelBundle
from ..tasks.base import TaskData

log = logging.getLogger("sparse_ft.jobs.entry")


@dataclass
class Setup:
    task: TaskData
    bundle: ModelBundle
    features: dict  # split name -> encoded Dataset


def build_setup(cfg: DictConfig, telemetry, device: torch.device, test_splits: bool = False) -> Setup:
    """Load the task, build the model and encode every split the job needs (phase "setup")."""
    from ..models import build_model
    from ..tasks import check_splits, load_task

    with telemetry.phase("setup"):
        task = load_task(cfg.task, cfg.seed)
        splits = {task.train_split, *task.eval_splits, *([task.test_split] if task.test_split else [])}
        if test_splits:
            splits |= {s for s in task.splits if s.startswith("test")}
        # every split the job reads must hold examples, checked before the model loads: the
        # training split where the job trains, the evaluation splits, a labeled test split (READ
        # scheme, synthetic), the unlabeled GLUE test files only when predicted
        needed = {*task.eval_splits, *([task.train_split] if cfg.get("job", "train") == "train" else [])}
        if task.test_split and task.info.get("split_scheme") != "glue":
            needed.add(task.test_split)
        if test_splits:
            needed |= {s for s in task.splits if s.startswith("test")}
        check_splits(task, sorted(needed))
        bundle = build_model(cfg.model, task, max_length=int(cfg.task.get("max_length", 128)))
        features = {s: bundle.encode(task, s) for s in sorted(splits) if s in task.splits}
    log.info("task %s: %s | model %s from %s", task.name, task.sizes(), bundle.name, bundle.source)
    bundle.module.to(device)
    return Setup(task, bundle, features)
