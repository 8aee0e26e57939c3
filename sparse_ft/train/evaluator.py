"""Predictions and metrics for a model bundle on a task: shared by training (per-epoch evaluation,
best-checkpoint selection), `job=evaluate` and `job=compress`, so every figure is computed the
same way. Under torchrun each rank predicts a strided shard and the shards are gathered."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..models.bundle import ModelBundle, to_device
from ..tasks.base import TaskData
from . import distributed as D


class Evaluator:
    def __init__(self, bundle: ModelBundle, task: TaskData, features: dict, device: torch.device, batch_size: int,
                 dist_info: D.DistInfo = D.DistInfo(), autocast_dtype: torch.dtype | None = None):
        self.bundle, self.task, self.features, self.device = bundle, task, features, device
        self.batch_size = int(batch_size)
        self.dist = dist_info
        self.autocast_dtype = autocast_dtype

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def predictions(self, split: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions (and labels) for a whole split, in the split's order (collective under torchrun)."""
        module = self.bundle.module
        was_training = module.training
        module.eval()
        data = self.features[split]
        indices = D.shard(list(range(len(data))), self.dist, pad=False)
        # a generator of its own: iterating a loader must not draw from the global RNG (dropout)
        loader = DataLoader(data, batch_size=self.batch_size, sampler=indices, collate_fn=self.bundle.collate,
                            generator=torch.Generator().manual_seed(0))
        preds, labels = [], []
        with torch.inference_mode(), self.autocast():
            for batch in loader:
                batch = to_device(batch, self.device)
                preds.append(self.bundle.predict(batch).numpy())
                if "labels" in batch:
                    labels.append(batch["labels"].cpu().numpy())
        module.train(was_training)
        p = np.concatenate(preds) if preds else np.zeros(0)
        y = np.concatenate(labels) if labels else None
        if self.dist.enabled:
            parts = D.gather_objects((indices, p, y))
            order = np.concatenate([np.asarray(ix, dtype=np.int64) for ix, _, _ in parts])
            inverse = np.argsort(order, kind="stable")
            p = np.concatenate([pp for _, pp, _ in parts])[inverse]
            y = None if parts[0][2] is None else np.concatenate([yy for _, _, yy in parts])[inverse]
        return p, y

    def evaluate(self, split: str) -> dict:
        preds, labels = self.predictions(split)
        if labels is None:
            raise ValueError(f"split {split!r} has no labels to evaluate against")
        # counts (invalid_predictions) stay integers in summary.json
        return {k: int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(v)
                for k, v in self.task.metric_fn(preds, labels).items()}

    def final_metrics(self) -> dict:
        """Every evaluation split (and a labelled test split), plus `main` of the selection split."""
        task = self.task
        final = {s: self.evaluate(s) for s in task.eval_splits if self.features.get(s)}
        if task.test_split and task.has_labels(task.test_split) and self.features.get(task.test_split):
            final["test"] = self.evaluate(task.test_split)
        final["main"] = final[task.eval_splits[0]]["main"]
        return final

    def measure_inference(self, split: str, n: int, phase) -> dict:
        """Latency of single-example prediction (batch size 1) over the first `n` examples of
        `split`, after 3 warm-up calls; peak memory comes from the telemetry phase "inference"."""
        self.bundle.module.eval()
        data = self.features[split]
        n = min(n, len(data))
        batches = [to_device(self.bundle.collate([data[i]]), self.device) for i in range(n)]
        times = []
        with torch.inference_mode(), self.autocast():
            for b in batches[:3]:
                self.bundle.predict(b)
            with phase("inference"):
                for b in batches:
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    start = time.perf_counter()
                    self.bundle.predict(b)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    times.append(time.perf_counter() - start)
        ms = np.array(times) * 1000.0
        return {
            "batch_size": 1,
            "split": split,
            "examples": n,
            "latency_ms_median": float(np.median(ms)),
            "latency_ms_p90": float(np.percentile(ms, 90)),
            "latency_ms_mean": float(ms.mean()),
        }
