"""One section of the reproduction report per paper.

Each module here (``fish``, ``pst``, ``essential``, ``read``, ``ere``) exposes

    section(runs: Sequence[Run], out_dir: Path, plots: bool = True) -> Section | None

built from run directories alone (``report.collect.Run``): its Markdown (tables with units in
the headers), the PNGs it wrote into ``out_dir``, and its claims, each the paper's statement
beside our measured figure with a verdict. ``None`` means the runs hold nothing for that paper.
``report.reproduce`` puts the sections together into ``docs/reproduction/README.md``.

A claim's verdict is one of VERDICTS, decided by the rules in ``report.verdicts`` (a score claim is
"undecidable on this proxy", with the reason, when dense sits near the majority class, a side has
fewer than 3 seeds or the difference is within seed noise); "not measurable here" always says why in ``ours`` (e.g.
"n/a: needs a GPU"), never a 0. ``ours`` names what it was measured on (model, task, seeds).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..verdicts import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, UNDECIDABLE, VERDICTS  # noqa: F401 (the rules live there)

# report order; each name is a module in this package
PAPERS = ("fish", "pst", "essential", "read", "ere")


@dataclass
class Claim:
    paper: str        # "FISH" | "PST" | "ESS" | "READ" | "ERE" (keys of report.paper.CITATIONS)
    claim: str        # the paper's statement, in words
    paper_value: str  # the paper's figure as it states it, e.g. "−56%"
    ours: str         # our figure with its unit and what it is measured on
    verdict: str      # one of VERDICTS

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"Claim.verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass
class Section:
    title: str
    markdown: str                                   # body, without the "## title" line
    files: list[Path] = field(default_factory=list)  # PNGs (or CSVs) written into out_dir
    claims: list[Claim] = field(default_factory=list)


SectionBuilder = Callable[..., "Section | None"]


def builder(name: str) -> SectionBuilder:
    """The ``section`` function of paper module ``name`` (imported lazily: plots need matplotlib)."""
    if name not in PAPERS:
        raise ValueError(f"unknown paper section {name!r}; choose from {', '.join(PAPERS)}")
    return importlib.import_module(f"{__name__}.{name}").section


def build_sections(runs: Sequence, out_dir: Path, plots: bool = True,
                   names: Sequence[str] = PAPERS) -> list[Section]:
    out = []
    for name in names:
        sec = builder(name)(runs, out_dir, plots)
        if sec is not None:
            out.append(sec)
    return out
