"""Sparse checkpointing (FISH paper §4.3): a full base checkpoint at the start, then at every
checkpoint only the entries that changed since the previous one.

Layout under `<run>/checkpoints/sparse/`:

* `base.safetensors` — the full state dict (parameters and buffers) before training;
* `delta_0001.safetensors`, … — for every tensor with changed entries `<name>::idx` (int32 flat
  indices) and `<name>::val` (the new values, in the tensor's dtype: fp32 for weights);
  "changed" compares bit patterns, so replaying is exact;
* `dense_0001.safetensors`, … — optional dense copies of the same checkpoints
  (`trainer.sparse_checkpoints_dense`), for checking the replay and measuring the ratio.

`replay(dir, n)` rebuilds checkpoint n (0 = the base) from base + deltas 1..n;
`python -m sparse_ft.artifacts.sparse_checkpoints RUN_DIR [N] [--out FILE]` writes it as a safetensors file
(default `<run>/checkpoints/sparse/rebuilt_<N>.safetensors`, keys as in `model.state_dict()`) and
prints what is there; `--list` only prints.
An entry costs 8 bytes (index + value) instead of 4, so a delta pays below 50% changed entries.

Resume: checkpoints/last records how many sparse checkpoints were written (`state_dict`); a
resumed run keeps base.safetensors, rebuilds its reference state by replaying base + those deltas
(bit-exact by construction), drops any later files (written after that checkpoint; they are
written again, identically, as the run replays those epochs) and goes on numbering from there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..core.io import save_tensors
from ..train.callbacks import TrainerCallback
from ..train.checkpoint import CheckpointError
from . import sparse_delta

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


def sparse_dir(run_or_dir) -> Path:
    d = Path(run_or_dir)
    return d / SUBDIR if (d / SUBDIR).is_dir() else d


def count_checkpoints(run_or_dir) -> int:
    return len(sorted(sparse_dir(run_or_dir).glob("delta_*.safetensors")))


def rebuild(run_or_dir, n: int | None = None, out: Path | None = None) -> tuple[Path, int]:
    """Write checkpoint `n` (None = the last, 0 = the base) as one safetensors file; returns
    (path, n). Default path: `<sparse dir>/rebuilt_<n>.safetensors`."""
    d = sparse_dir(run_or_dir)
    if not (d / "base.safetensors").is_file():
        raise FileNotFoundError(f"{d}: no base.safetensors (was the run made with trainer.sparse_checkpoints=true?)")
    last = count_checkpoints(d)
    n = last if n is None else int(n)
    if not 0 <= n <= last:
        raise ValueError(f"{d}: checkpoints 0 (the base) to {last} exist, asked for {n}")
    state = replay(d, n)
    out = Path(out) if out is not None else d / f"rebuilt_{n:04d}.safetensors"
    save_tensors(state, out, {"format": FORMAT, "checkpoint": str(n), "rebuilt_from": f"base + deltas 1..{n}"})
    return out, n


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sparse_ft.artifacts.sparse_checkpoints",
        description="Rebuild checkpoint N of a run saved with trainer.sparse_checkpoints=true (FISH §4.3) from its base "
        "and deltas, and write it as one safetensors file (keys as in model.state_dict()).",
    )
    parser.add_argument("run", type=Path, help="run directory (with checkpoints/sparse/) or the sparse checkpoint folder itself")
    parser.add_argument("n", type=int, nargs="?", default=None, help="checkpoint number: 0 = the base, 1.. = after each epoch (default: the last)")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: <run>/checkpoints/sparse/rebuilt_<N>.safetensors)")
    parser.add_argument("--list", action="store_true", help="only print the checkpoint files and their sizes; write nothing")
    args = parser.parse_args(argv)
    d = sparse_dir(args.run)
    if not (d / "base.safetensors").is_file():
        print(f"error: {d}: no sparse checkpoints here (a run made with trainer.sparse_checkpoints=true has checkpoints/sparse/base.safetensors)", file=sys.stderr)
        return 2
    files = {p.name: p.stat().st_size for p in sorted(d.glob("*.safetensors"))}
    info = {"dir": str(d), "checkpoints": count_checkpoints(d), "files": files}
    if not args.list:
        try:
            out, n = rebuild(d, args.n, args.out)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        info.update(checkpoint=n, out=str(out), bytes=out.stat().st_size)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
