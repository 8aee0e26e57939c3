"""The compressor interface that `job=compress` drives (sparse_ft/jobs/compress.py).

The job loads the source run's fine-tuned weights θ' (checkpoints/final/model.safetensors) and
its base θ (the pretrained weights the source run started from, rebuilt the same way the source
run built them), calls `compress(base, tuned, out_dir, context)` once (`context`: a `CompressContext`), loads `CompressResult.reconstructed`
into the model, evaluates it with the same evaluator as training runs, and writes summary.json
(`storage` from `artifacts`, `method_report` from `report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...core.options import MethodOptions
from ..registry import parse_options


@dataclass
class CompressResult:
    reconstructed: dict[str, torch.Tensor]  # full state dict in the base layout (keys as θ')
    artifacts: dict[str, int]  # file name (relative to the run dir) → bytes on disk
    report: dict = field(default_factory=dict)  # per-layer ranks, errors, timings… → summary.json method_report


@dataclass(frozen=True)
class CompressContext:
    """What the job knows about θ and θ' that the tensors do not say, handed to `compress`."""

    # tensors with no pretrained counterpart although θ holds them (a new task head at its seeded
    # random init, `models.heads.head_names`): stored as they are, not as a residual
    new_keys: frozenset = frozenset()
    # where θ came from (model name, name_or_path, revision, random_init, seed): kept in the artifact
    base_identity: dict | None = None


class Compressor:
    """A method that compresses a finished run instead of training (runs under `job=compress`).
    Its own small base: a name, typed options, `compress`; none of the training hooks of `Method`."""

    name = "compressor"
    kind = "compressor"  # what config validation and `python -m sparse_ft.methods` tell trainers from compressors by
    Options: type[MethodOptions] = MethodOptions

    def __init__(self, cfg):
        self.opts = self.parse_options(cfg)
        self.cfg = self.opts  # attribute and .get() access, typed and checked

    @classmethod
    def parse_options(cls, cfg, note: bool = True) -> MethodOptions:
        return parse_options(cls, cfg, note)

    @classmethod
    def validate(cls, cfg) -> None:
        """Cheap checks of `method.*` before anything loads; raise ConfigError naming the key."""
        cls.parse_options(cfg, note=False)

    def compress(self, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], out_dir: Path,
                 context: CompressContext = CompressContext()) -> CompressResult:
        raise NotImplementedError
