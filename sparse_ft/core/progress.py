"""The one progress-bar setup of the package (training, the Fisher pass, compression)."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool | str = "auto", **kwargs):
    """A tqdm bar of the terminal's width; `enabled`: True, False, or "auto" (on when stderr is a
    terminal). A disabled bar prints nothing and still iterates `iterable`."""
    from tqdm.auto import tqdm

    on = sys.stderr.isatty() if enabled == "auto" else bool(enabled)
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, disable=not on, **kwargs)
