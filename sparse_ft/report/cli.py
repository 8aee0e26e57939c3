"""`python -m sparse_ft.report PATH [PATH ...] [--out DIR] [--compare paper] [--no-plots]
[--costs | --essential | --reproduce]`.

Default: report.md, results.csv and plots; prints the selected table (and the runs that did not
complete). `--costs` prints (and writes costs.md) the cost table of every method; `--essential`
the essential-sparsity section; `--reproduce` writes the reproduction report README.md. Exit
status 2 when no run directory is found."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--costs", action="store_true", help="the cost table of every method (costs.md)")
    mode.add_argument("--essential", action="store_true",
                      help="the essential-sparsity section: OMP drop curve, knee, IMP/OMP mask similarity (essential.md + PNGs)")
    mode.add_argument("--reproduce", action="store_true",
                      help="the reproduction report: every paper's claims with verdicts, sections, costs (README.md + PNGs)")
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
        if args.costs or args.essential or args.reproduce:
            return _special(args)
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


def _out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    first = Path(args.paths[0])
    return first if first.is_dir() else first.parent


def _special(args) -> int:
    """--costs, --essential, --reproduce: one piece of the report, or the reproduction report."""
    from .collect import load_runs

    out = _out_dir(args)
    if args.reproduce:
        from .reproduce import write_reproduction

        rep = write_reproduction(args.paths, out, plots=not args.no_plots)
        print(rep.path.read_text(encoding="utf-8"))
        log.info("wrote %s", ", ".join(str(f) for f in rep.files))
        return 0
    runs = load_runs(args.paths)
    if not runs:
        raise NoRunsError("no run directories found under: " + ", ".join(args.paths))
    out.mkdir(parents=True, exist_ok=True)
    if args.costs:
        from .costs import costs_markdown

        text = "# Costs of every method\n\n" + costs_markdown(runs) + "\n"
        name = "costs.md"
    else:
        from .papers import builder
        from .reproduce import headline_table

        sec = builder("essential")(runs, out, not args.no_plots)
        if sec is None:
            print("error: no OMP run (method=omp) under the given paths", file=sys.stderr)
            return 2
        text = f"# {sec.title}\n\n{sec.markdown}\n\n" + headline_table(sec.claims) + "\n"
        name = "essential.md"
    (out / name).write_text(text, encoding="utf-8")
    print(text)
    log.info("wrote %s", out / name)
    return 0
