"""The sparse-checkpoint writer (FISH paper §4.3), a trainer callback (`trainer.sparse_checkpoints`):
a full base checkpoint at the start, then at every epoch end only the entries that changed since
the previous one, under `<run>/checkpoints/sparse/` (the layout, the replay and the command that
rebuilds a checkpoint: artifacts/sparse_checkpoints.py). `replay` is here because a resumed run
rebuilds its reference state with it. Entries are written and read by the sparse-delta codec
(artifacts/sparse_delta.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from ...artifacts import sparse_delta
from ...core.io import save_tensors
from ..checkpoint import CheckpointError
from . import TrainerCallback

FORMAT = "sparse-ft-sparse-checkpoint/1"
SUBDIR = Path("checkpoints") / "sparse"


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


class SparseCheckpointer(TrainerCallback):
    """Writes base + deltas for one module; `save()` at every checkpoint (e.g. each epoch end)."""

    state_key = "sparse_checkpoints"

    def __init__(self, run_dir: Path, module: torch.nn.Module, dense_copies: bool = False, write: bool = True):
        self.write = write  # under torchrun every rank has one (epoch ends stay collective), rank 0 writes
        self.dir = Path(run_dir) / SUBDIR
        self.module = module
        self.dense_copies = dense_copies
        self.last: dict[str, torch.Tensor] = {}
        self.count = 0
        self.files: dict[str, int] = {}
        self.entries: list[int] = []

    def write_base(self) -> None:
        if not self.write:
            return
        self.last = _state(self.module)
        self.files["base.safetensors"] = save_tensors(self.last, self.dir / "base.safetensors", {"format": FORMAT, "checkpoint": "0"})

    def save(self, epoch: int, step: int) -> int:
        """Checkpoint n+1: only the entries whose bits changed since checkpoint n. Returns bytes."""
        if not self.write:
            return 0
        now = _state(self.module)
        sparse = {}
        for name, t in now.items():
            idx = sparse_delta.changed_indices(t, self.last[name])
            if idx.numel():
                sparse[name] = (idx, t.reshape(-1)[idx])
        changed = sum(idx.numel() for idx, _ in sparse.values())
        self.count += 1
        meta = {"format": FORMAT, "checkpoint": str(self.count), "epoch": str(epoch), "step": str(step), "entries": str(changed)}
        name = f"delta_{self.count:04d}.safetensors"
        self.files[name] = sparse_delta.write(self.dir / name, sparse_delta.encode(sparse), meta)
        if self.dense_copies:
            dense = f"dense_{self.count:04d}.safetensors"
            self.files[dense] = save_tensors(now, self.dir / dense, {"format": FORMAT, "checkpoint": str(self.count), "dense": "1"})
        self.entries.append(changed)
        self.last = now
        return self.files[name]

    def on_epoch_end(self, trainer, epoch: int, step: int) -> None:  # a trainer callback
        self.save(epoch, step)

    def state_dict(self) -> dict:
        """What checkpoints/last keeps (the tensors themselves are the files on disk)."""
        return {"count": self.count, "entries": list(self.entries), "dense_copies": self.dense_copies}

    def load_state_dict(self, state: dict) -> None:
        """Resume: checkpoints 1..count of this run are on disk; later ones are dropped."""
        if not self.write:
            self.count = int(state["count"])
            return
        count = int(state["count"])
        if not (self.dir / "base.safetensors").is_file():
            raise CheckpointError(f"{self.dir}: base.safetensors is missing; a sparse-checkpoint run cannot resume without it")
        for path in sorted(self.dir.glob("*_*.safetensors")):
            kind, _, number = path.stem.rpartition("_")
            if kind in ("delta", "dense", "rebuilt") and number.isdigit() and int(number) > count:
                path.unlink()  # written after the checkpoint we resume from
        missing = [f"delta_{n:04d}.safetensors" for n in range(1, count + 1) if not (self.dir / f"delta_{n:04d}.safetensors").is_file()]
        if missing:
            raise CheckpointError(f"{self.dir}: the checkpoint counts {count} sparse checkpoints, but {', '.join(missing)} is missing")
        self.last = replay(self.dir, count)
        self.count = count
        self.entries = list(state.get("entries", []))
        self.files = {p.name: p.stat().st_size for p in sorted(self.dir.glob("*.safetensors"))
                      if p.name == "base.safetensors" or p.name.startswith(("delta_", "dense_"))}

    def summary_blocks(self, trainer) -> dict:
        return {"storage": {"sparse_checkpoints": self.summary()}}

    def summary(self) -> dict:
        """Bytes of base + deltas against dense checkpoints of the same run (one full file per
        checkpoint, base included: the size of base.safetensors, measured)."""
        sparse = sum(v for k, v in self.files.items() if not k.startswith("dense_"))
        dense_each = self.files.get("base.safetensors", 0)
        dense_total = dense_each * (self.count + 1)
        total_entries = sum(t.numel() for t in self.last.values())
        return {
            "checkpoints": self.count,
            "sparse_bytes": sparse,
            "dense_bytes": dense_total,
            "dense_bytes_each": dense_each,
            "ratio_dense_to_sparse": dense_total / sparse if sparse else None,
            "delta_bytes_mean": (sparse - dense_each) / self.count if self.count else None,
            "changed_fraction_mean": sum(self.entries) / (self.count * total_entries) if self.count and total_entries else None,
            "dense_copies_saved": self.dense_copies,
        }


def replay(run_or_dir, upto: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict at checkpoint `upto` (None = the last one; 0 = the base)."""
    d = Path(run_or_dir)
    if (d / SUBDIR).is_dir():
        d = d / SUBDIR
    state, _ = sparse_delta.read(d / "base.safetensors")
    deltas = sorted(d.glob("delta_*.safetensors"))
    if upto is not None:
        if upto > len(deltas):
            raise ValueError(f"{d}: only {len(deltas)} checkpoints, asked for {upto}")
        deltas = deltas[:upto]
    for path in deltas:
        sparse_delta.apply(sparse_delta.read(path)[0], state)
    return state
