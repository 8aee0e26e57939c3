"""File writes every package uses: atomic writes (temp file + rename, with the mode a plainly
written file would have) of text and of safetensors files, and the tensor fingerprints the
artifacts record (`tensor_bytes` is the one byte serialisation they hash).

A write that fails because the disk (or quota) is full raises `StorageError` naming the file being
written (`writing(path)`)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import StorageError

if TYPE_CHECKING:  # torch and safetensors load on first use: the report and the Hydra callbacks stay torch-free
    import torch

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# safetensors (Rust) reports the OS error only in its message
DISK_FULL_MARKERS = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28", "os error 122")


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    return any(m in str(err) for m in DISK_FULL_MARKERS)


@contextlib.contextmanager
def writing(path: Path):
    """Around a write of `path`: a full disk (ENOSPC, EDQUOT) becomes a `StorageError` naming the
    file (the OS error alone names none)."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise StorageError(path, f"no space left on the device while writing it ({type(err).__name__}: {err}); "
                                 "free space there (or write the runs elsewhere: output_root=<dir>) and run again") from err


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (/proc), else by setting
    and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode `open()` / `mkdir()` would give a new file / directory: 0o666 / 0o777 less the umask
    (mkstemp / mkdtemp use 0o600 / 0o700, which would hide results from the rest of a group)."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_path(path: Path):
    """A temp file in the target's directory, with the mode a plainly written file would have;
    `os.replace` onto the target makes the write atomic. Every atomic write of the package goes
    through here (summary.json, safetensors, deltas, metrics.jsonl rewrites, submission files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (temp file + rename), with the process's normal mode."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        with writing(path), open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` to `path` (safetensors); returns the file's size in bytes."""
    from safetensors.torch import save_file

    # safetensors refuses shared storage (tied embeddings) and non-contiguous views: store copies
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = atomic_path(path)
    try:
        with writing(path):
            save_file(plain, str(tmp), metadata=metadata)
        os.chmod(tmp, default_mode())  # safetensors writes its files 0o600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The tensor's raw bytes (CPU, C order): what every fingerprint of the package hashes."""
    import torch

    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def fingerprint(t: torch.Tensor) -> str:
    """One tensor's identity: dtype, shape and a blake2b digest of its bytes (the sparse delta's
    fingerprints of the base tensors)."""
    return f"{t.dtype}:{list(t.shape)}:" + hashlib.blake2b(tensor_bytes(t), digest_size=16).hexdigest()
