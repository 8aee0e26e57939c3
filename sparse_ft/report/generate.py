"""generate_report: collect → aggregate → results.csv, plots, report.md (→ paper numbers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.io import atomic_write_text
from .aggregate import Analysis, analyse
from .collect import NoRunsError, Run, load_runs
from .plots import PLOTS, write_plots
from .render import headline, render_report
from .results_csv import write_results_csv


@dataclass
class ReportResult:
    out_dir: Path
    runs: list[Run]
    files: list[Path]
    table_md: str
    markdown: str
    plots: dict[str, str | None]
    paper_md: str | None = None

    @property
    def failed(self) -> list[Path]:
        return [r.path for r in self.runs if not r.completed]


def _paper_markdown(an: Analysis, compare: str | None) -> str | None:
    if not compare:
        return None
    if compare != "paper":
        raise ValueError(f"--compare: unknown value {compare!r} (only 'paper')")
    from .paper import comparison_markdown, records_from_runs

    chosen = an.selected_runs()
    records = records_from_runs(an.completed, an.run_label, lambda r: id(r) in chosen, an.variant_label)
    return comparison_markdown(records, an.score_scale)


def generate_report(paths: Sequence[str | Path], out: str | Path | None = None,
                    compare: str | None = None, plots: bool = True) -> ReportResult:
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    if not runs:
        raise NoRunsError("no run directories (a folder with summary.json, config.yaml or .hydra/) found under: "
                          + ", ".join(str(p) for p in paths))
    out_dir = Path(out) if out is not None else (paths[0] if paths[0].is_dir() else paths[0].parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    an = analyse(runs)
    paper_md = _paper_markdown(an, compare)  # before any file is written: a bad value writes nothing

    csv_path = out_dir / "results.csv"
    write_results_csv(runs, an.varying, csv_path)
    plot_status = write_plots(an, out_dir) if plots else {n: "plots disabled (--no-plots)" for n in PLOTS}

    markdown = render_report(an, paths, plot_status, PLOTS, paper_md)
    md_path = out_dir / "report.md"
    atomic_write_text(md_path, markdown)
    files = [csv_path, md_path] + [out_dir / n for n, why in plot_status.items() if why is None]
    return ReportResult(out_dir, runs, files, headline(an), markdown, plot_status, paper_md)
