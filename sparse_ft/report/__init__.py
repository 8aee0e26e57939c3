"""Turn run directories (single runs or Hydra multirun sweeps) into tables and plots.

    python -m sparse_ft.report PATH [PATH ...] [--out DIR] [--compare paper] [--no-plots]

Reads only what the runner leaves behind (``config.yaml``, ``summary.json``; see "Run
directory" in DESIGN.md) and imports nothing of the training side, so it runs without torch
on any machine the run directories were copied to. Writes into ``--out`` (default: the first
PATH):

- ``results.csv``  one row per run dir found, failed and unfinished ones included;
- ``report.md``    per task and method the setting with the best mean validation score (the
                   papers' protocol) and the GLUE average of those, then every setting as
                   mean ± sample std (n) over seeds, only completed training runs averaged;
                   evaluate/compress runs in a table of their own beside their source's score;
                   then a list of the runs that did not complete;
- ``score_vs_updated.png``, ``score_vs_energy.png``, ``score_vs_sparsity.png``,
  ``memory_per_method.png``  (only those with data; report.md says which were skipped).

The flow is one-directional: collect (run dirs → Run) → aggregate (settings, groups,
selection) → results_csv / render (Markdown) / plots → paper (``--compare paper``). The
reproduction report's paper sections (``papers``, ``--reproduce``) decide their claims by the rules
in ``verdicts`` (majority-class gate, seeds, seed noise; "undecidable on this proxy" otherwise).
"""

from .aggregate import (Analysis, Group, Selected, analyse, canon, glue_average, is_dense_method,
                        is_glue_task, mean_std, select_best, setting_keys, varying_config_keys)
from .collect import (COMPLETED, ENERGY_SOURCES, UNFINISHED, NoRunsError, Run, as_number, failed_runs,
                      find_run_dirs, flatten, load_run, load_runs)
from .cli import build_parser, main
from .generate import ReportResult, generate_report
from .plots import PLOTS, build_figures, write_plots
from .render import fmt_cell, fmt_num, md_table
from .results_csv import write_results_csv

__all__ = [
    "COMPLETED", "ENERGY_SOURCES", "PLOTS", "UNFINISHED", "Analysis", "Group", "NoRunsError", "ReportResult",
    "Run", "Selected", "analyse", "as_number", "build_figures", "build_parser", "canon", "failed_runs",
    "find_run_dirs", "flatten", "fmt_cell", "fmt_num", "generate_report", "glue_average", "is_dense_method",
    "is_glue_task", "load_run", "load_runs", "main", "md_table", "mean_std", "select_best", "setting_keys",
    "varying_config_keys", "write_plots", "write_results_csv",
]
