"""`python -m sparse_ft.artifacts.ere`: the residual artifacts that `job=compress` writes (ERE, BITQ, LRA).

  python -m sparse_ft.artifacts.ere decompress <artifact | run dir> <out dir> --base <base.safetensors>
      writes <out dir>/model.safetensors: the full fine-tuned weights θ + the decoded residuals
      (keys and dtypes of θ'), exactly the tensors `compress()` handed to the evaluator. The base
      must be the θ the run was compressed against (its sha256 fingerprint is checked).
  python -m sparse_ft.artifacts.ere info <artifact | run dir>
      the method, options, bytes and per-tensor codes and ranks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ARTIFACT_NAMES = ("ere.safetensors", "bitq.safetensors", "lra.safetensors")


def find_artifact(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ARTIFACT_NAMES if (path / n).is_file()]
        if len(found) != 1:
            raise SystemExit(f"{path}: expected exactly one of {', '.join(ARTIFACT_NAMES)}, found {len(found)}")
        return found[0]
    if not path.is_file():
        raise SystemExit(f"{path}: no such artifact")
    return path


def decompress(artifact: Path, base_path: Path, verify: bool = True) -> dict:
    """The reconstructed state dict of `artifact` against the base weights file `base_path`."""
    from safetensors.torch import load_file

    from ..methods.compress.artifact import base_fingerprint, base_keys, decode, read_artifact

    tensors, meta = read_artifact(artifact)
    base = load_file(str(base_path))
    needed = base_keys(meta)
    missing = [k for k in needed if k not in base]
    if missing:
        raise SystemExit(f"{base_path}: lacks {len(missing)} tensor(s) the artifact needs, e.g. {missing[:3]}")
    if verify:
        got = base_fingerprint(base, needed)
        want = meta["base"]["sha256"]
        if got != want:
            raise SystemExit(f"{base_path}: not the base this artifact was compressed against (sha256 {got[:12]}… "
                             f"!= {want[:12]}…); pass --no-verify to decode anyway")
    return decode(tensors, meta, base)


def info(artifact: Path) -> dict:
    from ..methods.compress.artifact import read_artifact

    tensors, meta = read_artifact(artifact)
    entries = meta["entries"]
    coded = {k: e for k, e in entries.items() if e["code"] in ("lowrank_q", "lowrank", "quant")}
    return {
        "artifact": str(artifact),
        "bytes": artifact.stat().st_size,
        "method": meta["method"],
        "options": meta["options"],
        "base": meta["base"],
        "codes": dict(Counter(e["code"] for e in entries.values())),
        "ranks": {k: e["rank"] for k, e in coded.items() if "rank" in e},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.artifacts.ere", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("decompress", help="write <out dir>/model.safetensors = θ + the decoded residuals")
    d.add_argument("artifact", type=Path, help="ere/bitq/lra .safetensors, or the compress run's directory")
    d.add_argument("out_dir", type=Path)
    d.add_argument("--base", type=Path, required=True, help="safetensors file with the base weights θ (keys as in the run's model)")
    d.add_argument("--no-verify", action="store_true", help="skip the base fingerprint check")
    i = sub.add_parser("info", help="print the artifact's method, options, codes and ranks as JSON")
    i.add_argument("artifact", type=Path)
    args = parser.parse_args(argv)

    artifact = find_artifact(args.artifact)
    if args.command == "info":
        print(json.dumps(info(artifact), indent=2))
        return 0
    from ..core.io import save_tensors

    if not args.base.is_file():
        raise SystemExit(f"--base {args.base}: no such file")
    weights = decompress(artifact, args.base, verify=not args.no_verify)
    out = args.out_dir / "model.safetensors"
    size = save_tensors(weights, out)
    print(f"wrote {out} ({len(weights)} tensors, {size} bytes) from {artifact}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
