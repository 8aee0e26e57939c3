"""Sparse checkpointing (FISH paper §4.3): a full base checkpoint at the start, then at every
checkpoint only the entries that changed since the previous one.

Layout under `<run>/checkpoints/sparse/`:

* `base.safetensors` — the full state dict (parameters and buffers) before training;
* `delta_0001.safetensors`, … — for every tensor with changed entries `<name>::idx` (int32 flat
  indices) and `<name>::val` (the new values, in the tensor's dtype: fp32 for weights);
  "changed" compares bit patterns, so replaying is exact;
* `dense_0001.safetensors`, … — optional dense copies of the same checkpoints
  (`trainer.sparse_checkpoints_dense`), for checking the replay and measuring the ratio.

The writer is a trainer callback, `SparseCheckpointer` (train/callbacks/sparse_checkpoints.py, with
`replay`, which a resumed run needs too). `replay(dir, n)` rebuilds checkpoint n (0 = the base) from base + deltas 1..n;
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

from ..core.io import save_tensors
from ..train.callbacks.sparse_checkpoints import FORMAT, SUBDIR, SparseCheckpointer, replay  # noqa: F401  (the writer, a trainer callback)


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
