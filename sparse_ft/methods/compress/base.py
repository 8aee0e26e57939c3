"""The compressor interface that `job=compress` drives (sparse_ft/jobs/compress.py).

The job loads the source run's fine-tuned weights θ' (checkpoints/final/model.safetensors) and
its base θ (the pretrained weights the source run started from, rebuilt the same way the source
run built them), calls `compress(base, tuned, out_dir)` once, loads `CompressResult.reconstructed`
into the model, evaluates it with the same evaluator as training runs, and writes summary.json
(`storage` from `artifacts`, `method_report` from `report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base import Method


@dataclass
class CompressResult:
    reconstructed: dict[str, torch.Tensor]  # full state dict in the base layout (keys as θ')
    artifacts: dict[str, int]  # file name (relative to the run dir) → bytes on disk
    report: dict = field(default_factory=dict)  # per-layer ranks, errors, timings… → summary.json method_report


class Compressor(Method):
    """A method that compresses a finished run instead of training (runs under `job=compress`)."""

    kind = "compressor"
    # set by the job before compress(): tensors with no pretrained counterpart (a new task head,
    # stored as they are, not as a residual against its random init) and where θ came from
    new_keys: frozenset = frozenset()
    base_identity: dict | None = None

    def compress(self, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], out_dir: Path) -> CompressResult:
        raise NotImplementedError
