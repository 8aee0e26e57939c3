"""Shared helpers: run the real entry point in-process (fast) or through `python run.py` (the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = REPO.parent / "shared" / "data" / "glue"

# tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

QUICK = ["energy=off", "trainer.progress=false", "trainer.log_every=1"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sparse_ft.config.resolvers  # noqa: F401

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_inprocess(run_dir: Path, overrides: list[str]) -> dict:
    """Compose like run.py does and call the entry point; returns summary.json."""
    from omegaconf import OmegaConf

    from sparse_ft.jobs.entry import run

    cfg = compose(QUICK + overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir)
    run(cfg)
    return json.loads((run_dir / "summary.json").read_text())


def refused_inprocess(run_dir: Path, overrides: list[str]) -> str:
    """A job refused before it starts (a config, source or resume error): it exits 2 and writes
    no summary.json (issue 19 item 11: no run directory is left behind). Returns its error as
    summary.json would have said it: "<type>: <key>: <message>"."""
    had_summary = (run_dir / "summary.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        run_inprocess(run_dir, overrides)
    assert exit_info.value.code == 2
    assert (run_dir / "summary.json").exists() == had_summary, "a refused job wrote a summary.json"
    cause = exit_info.value.__cause__
    return f"{type(cause).__name__}: {cause}"


def run_cli(args: list[str], tmp_path: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    flags = [a for a in args if a.startswith("-")]  # Hydra wants -m etc. before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *flags, f"output_root={tmp_path}", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra")


@pytest.fixture
def glue_dir() -> Path:
    if not (GLUE_DIR / "MRPC" / "train.tsv").is_file():
        pytest.fail(f"the real MRPC files are expected at {GLUE_DIR}/MRPC (../shared beside the checkout)")
    return GLUE_DIR
