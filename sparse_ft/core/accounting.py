"""Parameter and storage accounting, measured on tensors and files, never taken from flags."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn


class InitialWeights:
    """The base model's parameters as the run starts, for `params.updated`, kept on disk rather
    than in memory: `torch.save` streams them to `path` one storage at a time, and `count_updated`
    memory-maps the file (`torch.load(mmap=True)`), so no copy of the pretrained weights stays
    resident while the job trains (a 0.9 GB CPU copy at T5-base shapes used to sit in every
    phase's peak). Keyed by the base model's names (`named_parameters`: a tied weight once), so
    it survives any wrapping. `close()` deletes the file."""

    def __init__(self, module: nn.Module, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.detach() for n, p in module.named_parameters()}, self.path)

    def count_updated(self, weights: dict[str, torch.Tensor]) -> int:
        try:
            initial = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # a torch that cannot map this file: read it (after training, outside every phase)
            initial = torch.load(self.path, map_location="cpu", weights_only=True)
        try:
            return count_updated(weights, initial)
        finally:
            del initial

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def count_updated(weights: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> int:
    """Entries of the pretrained parameters (`initial`, keyed by base-model names) whose bits
    differ in `weights` (a state dict in the base layout; a weight that moved and came back
    counts as unchanged)."""
    changed = 0
    for name, before in initial.items():
        if name not in weights:
            raise KeyError(f"the exported weights have no {name!r}: Method.export must return the base model's layout")
        now = weights[name].detach().to("cpu")
        changed += int((now.reshape(-1) != before.reshape(-1)).sum())
    return changed


def param_block(total: int, trainable: int, updated: int, added: int = 0) -> dict:
    """`total`: parameters of the pretrained model; `added`: parameters a method brought in."""
    return {
        "total": total,
        "trainable": trainable,
        "updated": updated,
        "added": added,
        "updated_fraction": updated / total if total else 0.0,
        "trainable_fraction": trainable / total if total else 0.0,
    }


def dense_fp32_bytes(tensors: nn.Module | Mapping[str, torch.Tensor], skip: Iterable[str] = ()) -> int:
    """Bytes of the tensors of a dense fp32 checkpoint of a model (its `state_dict`) or of a
    name -> tensor mapping: floating point at 4 bytes, tensors sharing storage (tied) once,
    integers at their size; the keys in `skip` (e.g. a compressor's aliases) are not counted."""
    items = (tensors.state_dict() if isinstance(tensors, nn.Module) else tensors).items()
    skip, seen, total = set(skip), set(), 0
    for name, t in items:
        if name in skip:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen and t.is_floating_point():
            seen.add(key)
            total += t.numel() * 4
        elif not t.is_floating_point():
            total += t.numel() * t.element_size()
    return total


def storage_block(run_dir: Path, dense_bytes: int, extra: dict | None = None) -> dict:
    """Bytes of every artifact under checkpoints/ (and those a method reports) with the ratio to dense fp32."""
    artifacts = {}
    files = sorted((run_dir / "checkpoints").rglob("*")) if (run_dir / "checkpoints").exists() else []
    for f in files:
        if f.is_file() and not f.name.startswith("."):
            artifacts[str(f.relative_to(run_dir))] = f.stat().st_size
    for name, size in (extra or {}).items():
        artifacts[name] = size
    return {
        "dense_fp32_bytes": dense_bytes,
        "artifacts": {k: {"bytes": v, "ratio_to_dense_fp32": v / dense_bytes if dense_bytes else None} for k, v in artifacts.items()},
    }


def optimizer_block(optimizer: torch.optim.Optimizer | None) -> dict | None:
    """Bytes the optimizer holds beyond the weights (AdamW's moments, SGD's momentum), counted
    from its state tensors at the end of training, so every method is measured the same way."""
    if optimizer is None:
        return None
    state_bytes, state_elements = 0, 0
    for per_param in optimizer.state.values():
        for value in per_param.values():
            if torch.is_tensor(value) and value.dim() > 0:  # step counters are scalars
                state_bytes += value.numel() * value.element_size()
                state_elements += value.numel()
    params = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    return {"kind": type(optimizer).__name__, "param_elements": int(params),
            "state_elements": int(state_elements), "state_bytes": int(state_bytes)}
