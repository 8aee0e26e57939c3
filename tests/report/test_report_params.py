"""Updated %, trainable %, added params and sparsity are four different figures in the report:
updated/trainable are never called sparsity; sparsity only comes from a measured
`summary.json -> sparsity.overall`."""

from __future__ import annotations

import re
from pathlib import Path

from sparse_ft.report import load_runs, main
from test_report import _config, _read_csv, _summary, _write_run

TOTAL = 22_700_000


def _run(root: Path, i: int, method: str, updated: float, trainable: float, **extra) -> None:
    s = _summary(method, "mrpc", 1, 0.8 - i / 100)
    s["params"] = {"total": TOTAL, "trainable": int(TOTAL * trainable), "updated": int(TOTAL * updated),
                   "updated_fraction": updated, "trainable_fraction": trainable}
    for key, value in extra.items():
        if isinstance(value, dict):
            s.setdefault(key, {}).update(value)
        else:
            s[key] = value
    d = root / str(i)
    _write_run(d, _config(method, "mrpc", 1, d), s)


def _headers(md: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines()
            if ln.startswith("| method |")]


def _cells(md: str, method: str) -> list[list[str]]:
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines()
            if ln.startswith(f"| {method} |")]


def test_updated_and_trainable_are_separate_and_never_sparsity(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    # dense MiniLM: everything trainable, 78% of the entries updated (unseen-token embeddings stay)
    _run(root, 0, "dense", updated=0.78, trainable=1.0)
    # random mask: 0.5% trainable, 0.11% of the entries actually moved
    _run(root, 1, "random_mask", updated=0.0011, trainable=0.005)
    assert main([str(root)]) == 0
    md = (root / "report.md").read_text()
    figure_tables = [h for h in _headers(md) if "updated %" in h]
    assert len(figure_tables) == 3  # selected, every setting, per method × task × setting
    assert all("trainable %" in h for h in figure_tables)
    for header in _headers(md):
        assert not any("sparsity" in h for h in header), header
        assert "added params" not in header
    assert any("78.0 ± — (1)" in r and "100 ± — (1)" in r for r in _cells(md, "dense"))
    assert any("0.110 ± — (1)" in r and "0.500 ± — (1)" in r for r in _cells(md, "random_mask"))
    assert "Neither is a sparsity" in md
    # no measured sparsity: the sparsity plot is skipped and says why; nothing renames 1 - updated
    assert not (root / "score_vs_sparsity.png").exists()
    assert re.search(r"`score_vs_sparsity.png`: skipped — no completed run measured `sparsity.overall`", md)
    assert "22.0 ± — (1)" not in md and "99.9 ± — (1)" not in md  # 1 - updated: 22% and 99.89%
    assert all(r.sparsity is None for r in load_runs([root]))


def test_measured_sparsity_and_added_params_are_shown(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _run(root, 0, "dense", updated=0.78, trainable=1.0)
    _run(root, 1, "lora", updated=0.0, trainable=0.004, params={"added": 294_912})
    _run(root, 2, "magnitude", updated=0.5, trainable=1.0, sparsity={"overall": 0.9, "per_layer": {"a": 0.9}})
    assert main([str(root)]) == 0
    md = (root / "report.md").read_text()
    header = _headers(md)[0]  # the selected table
    assert header.index("updated %") < header.index("trainable %") < header.index("added params") \
        < header.index("sparsity %")
    lora = _cells(md, "lora")[0]
    assert lora[header.index("added params")] == "294912 ± — (1)"
    assert lora[header.index("sparsity %")] == "—"  # lora measured none
    magnitude = _cells(md, "magnitude")[0]
    assert magnitude[header.index("sparsity %")] == "90.0 ± — (1)"
    assert magnitude[header.index("updated %")] == "50.0 ± — (1)"
    assert "`params.added`" in md and "`sparsity.overall`" in md
    assert (root / "score_vs_sparsity.png").is_file()
    assert "![score_vs_sparsity.png](score_vs_sparsity.png)" in md
    cols, rows = _read_csv(root / "results.csv")
    assert "params.added" in cols and "sparsity.overall" in cols
    assert rows[1]["params.added"] == "294912" and rows[2]["sparsity.overall"] == "0.9"


def test_run_exposes_any_summary_block(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    _run(root, 0, "fish", updated=0.005, trainable=0.005,
         communication={"bytes": 1000, "full_model_equivalents": 4.8}, storage=None)
    (run,) = load_runs([root])
    assert run.block("communication") == {"bytes": 1000, "full_model_equivalents": 4.8}
    assert run.figure("communication.full_model_equivalents") == 4.8
    assert run.block("storage") == {} and run.block("no_such_block") == {}
    assert run.figure("time.wall_s.total") == 100.0 and run.figure("versions.python") is None
