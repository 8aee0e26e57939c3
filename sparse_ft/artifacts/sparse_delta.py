"""The sparse-delta file format, one codec for all its writers and readers: the sparse fine-tuned
checkpoint of the masked methods (`delta.safetensors`, written by `methods/masked/delta.py`, applied
by `apply_delta`) and the deltas of sparse checkpointing (`checkpoints/sparse/delta_NNNN.safetensors`,
`sparse_checkpoints`).

A delta is one safetensors file whose keys are `<tensor name>::<kind>`:

* `::idx` (int32 flat indices) and `::val` (the new values there, in the tensor's dtype): the
  entries that changed;
* `::full`: a tensor stored whole (a new task head);
* `::buffer`: a buffer stored whole (BatchNorm statistics).

"Changed" compares bit patterns (`bits_differ`: -0.0 against 0.0 and NaN payloads count), so
applying a delta to the tensors it was taken against is exact. The file's metadata (format name,
base identity, fingerprints, counts) is the writer's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.io import save_tensors

KINDS = ("idx", "val", "full", "buffer")
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class DeltaError(RuntimeError):
    """The delta cannot be applied; the message says why."""


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (floating point of 2, 4 or 8 bytes), else itself."""
    t = t.detach().contiguous()
    if t.is_floating_point() and t.element_size() in _INT_OF_SIZE:
        return t.view(_INT_OF_SIZE[t.element_size()])
    return t


def bits_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise: do the bit patterns differ (so -0.0 vs 0.0 and NaN payloads count)?"""
    if a.is_floating_point():
        b = b.to(a.dtype)
    return _bits(a) != _bits(b)


def changed_indices(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """The flat indices (int64) where `now`'s bits differ from `before`'s."""
    return bits_differ(now.reshape(-1), before.reshape(-1)).nonzero().view(-1)


def encode(sparse: dict, full: dict | None = None, buffers: dict | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors: `sparse` {name: (flat indices, values)}, `full` and `buffers` {name: tensor}."""
    tensors = {}
    for name, (idx, values) in sparse.items():
        tensors[f"{name}::idx"] = idx.to(torch.int32)
        tensors[f"{name}::val"] = values
    for kind, whole in (("full", full), ("buffer", buffers)):
        for name, t in (whole or {}).items():
            tensors[f"{name}::{kind}"] = t
    return tensors


def write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> int:
    """Write an `encode`d delta atomically; returns the file's size in bytes."""
    return save_tensors(tensors, Path(path), meta)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a delta file."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


def apply(tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor] | None = None) -> None:
    """Write the delta into `targets` (name -> tensor, changed in place; `::buffer` entries go to
    `buffers`). A key of no known kind is a `DeltaError`."""
    with torch.no_grad():
        for key, t in tensors.items():
            name, _, kind = key.rpartition("::")
            if kind == "idx":
                dest = targets[name]
                dest.view(-1).index_copy_(0, t.long(), tensors[f"{name}::val"].to(dest.dtype))
            elif kind == "full":
                targets[name].copy_(t)
            elif kind == "buffer":
                (targets if buffers is None else buffers)[name].copy_(t)
            elif kind != "val":
                raise DeltaError(f"unknown entry {key!r} in the delta")
