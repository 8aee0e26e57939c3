"""`python -m sparse_ft.bench`: runs the groups, prints a table, writes bench.json."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from . import __doc__ as DOC
from .harness import DEFAULT_GLUE

# group name -> "module:function"; each module is imported only when its group runs
GROUPS = {
    "trainer": "trainer:bench_trainer",
    "energy": "energy:bench_energy",
    "fish": "fish:bench_fish",
    "pruning": "pruning:bench_pruning",
    "ere": "ere:bench_ere",
    "read": "read:bench_read",
}


def run_group(name: str, args) -> dict:
    module, fn = GROUPS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), fn)(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.bench", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file for the figures")
    parser.add_argument("--only", choices=sorted(GROUPS), action="append", help="run only this group (repeatable)")
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE, help="GLUE folder holding MRPC/")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fake-smi", action="store_true", help="energy group: sample the test suite's fake nvidia-smi (CPU machines)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for name in args.only or list(GROUPS):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results.update(run_group(name, args))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
