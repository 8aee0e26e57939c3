"""`python -m sparse_ft.report PATH [PATH ...] [--out DIR] [--compare paper] [--no-plots]`.

Prints the selected table (and the runs that did not complete) to stdout; exit status 2 when
no run directory is found."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .collect import NoRunsError
from .generate import generate_report

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparse_ft.report",
        description="Tables and plots from sparse-ft run directories (single runs or multirun sweeps).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="run dirs or sweep dirs (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="where to write results.csv, report.md, *.png (default: the first PATH)")
    p.add_argument("--compare", choices=["paper"], help="add the papers' headline numbers beside ours")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings on stderr")
    return p


def _last_error_line(error: str | None) -> str:
    return error.strip().splitlines()[-1][:200] if error and error.strip() else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        result = generate_report(args.paths, out=args.out, compare=args.compare, plots=not args.no_plots)
    except NoRunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.table_md)
    if result.failed:
        print(f"\n{len(result.failed)} run(s) did not complete (see report.md):")
        for r in result.runs:
            if not r.completed:
                print(f"  {r.path}  [{r.status}] {_last_error_line(r.error)}")
    if result.paper_md:
        print("\n## Paper headline numbers beside ours\n")
        print(result.paper_md)
    log.info("wrote %s", ", ".join(str(f) for f in result.files))
    return 0
