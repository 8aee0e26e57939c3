"""Checkpoint files: safetensors for tensors, written atomically (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def atomic_path(path: Path):
    """A temp file in the target's directory; `os.replace` onto the target makes the write atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` to `path` (safetensors); returns the file's size in bytes."""
    # safetensors refuses shared storage (tied embeddings) and non-contiguous views: store copies
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = atomic_path(path)
    try:
        save_file(plain, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
