"""The report command on synthetic run directories (no training, no torch)."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sparse_ft import report as rep
from sparse_ft.jobs.hydra_callbacks import ReportOnMultirunEnd, failed_runs
from sparse_ft.report import main

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MiB = 1 << 20

# (method, task, seed) -> validation main score; hand-checked aggregates below.
SCORES = {
    ("dense", "mrpc", 1): 0.80, ("dense", "mrpc", 2): 0.84,  # 82.00 ± 2.83 (2)
    ("dense", "rte", 1): 0.60, ("dense", "rte", 2): 0.64,    # 62.00 ± 2.83 (2)
    ("fish", "mrpc", 1): 0.78, ("fish", "mrpc", 2): 0.81,    # 79.50 ± 2.12 (2)
    ("fish", "rte", 1): 0.58, ("fish", "rte", 2): 0.62,      # 60.00 ± 2.83 (2)
}
TASK_EPOCHS = {"mrpc": 3, "rte": 5}  # follows the task: must not become a "setting"


def _config(method: str, task: str, seed: int, run_dir: Path) -> dict:
    m = {"name": method}
    if method == "fish":
        m.update(density=0.005, num_samples=1024)
    return {
        "seed": seed,
        "model": {"name": "minilm", "name_or_path": "/models/minilm"},
        "task": {"name": task, "epochs": TASK_EPOCHS[task], "max_length": 128},
        "method": m,
        "trainer": {"lr": 5e-5, "batch_size": 16, "max_steps": 0, "epochs": TASK_EPOCHS[task]},
        "experiment": None,
        "output_dir": str(run_dir),
    }


def _summary(method: str, task: str, seed: int, main: float, status: str = "completed", **extra) -> dict:
    frac = 0.005 if method == "fish" else 1.0
    s = {
        "status": status, "task": task, "method": method, "model": "minilm", "seed": seed,
        "data": {"train": 3668, "validation": 408, "test": 1725},
        "metrics": {"validation": {"accuracy": main - 0.01, "f1": main, "main": main}, "main": main},
        "best": {"step": 120, "metrics": {"f1": main, "main": main}, "main": main},
        "params": {"total": 22_700_000, "trainable": int(22_700_000 * frac), "updated": int(22_700_000 * frac),
                   "updated_fraction": frac},
        "storage": {"dense_fp32_bytes": 90_800_000,
                    "artifacts": {"checkpoints/final/model.safetensors": {"bytes": 90_800_000,
                                                                          "ratio_to_dense_fp32": 1.0}}},
        "energy": {"available": True, "reason": None, "backend": "nvml", "kwh_counter": None,
                   "kwh_power_integral": 0.010 if method == "dense" else 0.006, "kwh_util_estimate": 0.02,
                   "cpu_kwh": None, "phases": {"train": {"kwh": 0.005}}},
        "memory": {"device": "cuda", "peak_bytes": {"train": (200 if method == "dense" else 150) * MiB,
                                                    "eval": 50 * MiB}},
        "time": {"wall_s": {"total": 100.0, "train": 80.0, "eval": 20.0}, "train_samples_per_s": 120.0 + seed},
        "versions": {"python": "3.11"}, "git_commit": None,
    }
    s.update(extra)
    return s


def _write_run(run_dir: Path, config: dict | None, summary: dict | None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A Hydra-multirun-shaped dir: 8 completed runs, 1 failed, 1 unfinished."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    i = 0
    for (method, task, seed), main_score in SCORES.items():
        d = root / str(i)
        _write_run(d, _config(method, task, seed, d), _summary(method, task, seed, main_score))
        i += 1
    d = root / str(i)  # failed: its (bogus) score must never be averaged
    _write_run(d, _config("fish", "rte", 3, d),
               _summary("fish", "rte", 3, 0.01, status="failed",
                        error="Traceback ...\nRuntimeError: CUDA out of memory in step 7"))
    i += 1
    d = root / str(i)  # unfinished: config only
    _write_run(d, _config("fish", "mrpc", 3, d), None)
    (d / "run.log").write_text("INFO start\nINFO epoch 1/3\n")
    return root


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as fh:
        r = csv.DictReader(fh)
        return list(r.fieldnames), list(r)


def _is_png(p: Path) -> bool:
    return p.is_file() and p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000


def test_report_main_writes_everything(sweep: Path, capsys) -> None:
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out

    # results.csv: one row per run dir, failed/unfinished included
    cols, rows = _read_csv(sweep / "results.csv")
    assert len(rows) == 10
    assert [r["run_dir"] for r in rows] == [str(sweep / str(i)) for i in range(10)]
    statuses = [r["status"] for r in rows]
    assert statuses.count("completed") == 8 and statuses[8] == "failed" and statuses[9] == "unfinished"
    assert cols[:2] == ["run_dir", "status"]
    # varying config keys only (seed included); constant ones left out
    for k in ("seed", "task.name", "method.name", "method.density", "trainer.epochs", "output_dir"):
        assert k in cols, k
    for k in ("trainer.lr", "trainer.batch_size", "model.name", "model.name_or_path", "experiment",
              "task.max_length"):
        assert k not in cols, k
    # summary figures, flattened
    for k in ("metrics.main", "metrics.validation.f1", "params.updated_fraction", "energy.kwh_power_integral",
              "memory.peak_bytes.train", "time.train_samples_per_s", "data.train",
              "storage.artifacts.checkpoints/final/model.safetensors.ratio_to_dense_fp32", "error"):
        assert k in cols, k
    assert rows[0]["seed"] == "1" and rows[1]["seed"] == "2"
    assert rows[2]["method.density"] == "0.005" or rows[4]["method.density"] == "0.005"
    assert "CUDA out of memory" in rows[8]["error"]
    assert rows[9]["metrics.main"] == "" and rows[9]["method"] == "fish" and rows[9]["seed"] == "3"
    assert float(rows[0]["report.energy_kwh"]) == pytest.approx(0.010)
    assert rows[0]["report.energy_source"] == "kwh_power_integral"

    md = (sweep / "report.md").read_text()
    # hand-computed: dense mrpc 0.80/0.84 -> 82.00 ± sqrt(8)=2.83; fish mrpc 0.78/0.81 -> 79.50 ± 2.12
    assert "82.00 ± 2.83 (2)" in md and "62.00 ± 2.83 (2)" in md
    # failed (0.01) and unfinished runs are not averaged in: fish stays at n = 2
    assert "79.50 ± 2.12 (2)" in md and "60.00 ± 2.83 (2)" in md
    assert "(3)" not in md.split("## Failed")[0]
    # GLUE avg column: dense (82 + 62) / 2, fish (79.5 + 60) / 2, tasks named
    assert "GLUE avg (×100)" in md
    assert "72.00" in md and "69.75" in md
    assert "over: mrpc, rte" in md
    # the setting is method.density; per-task epochs are not a setting
    assert "method.density=0.005" in md
    assert "trainer.epochs=" not in md
    # efficiency columns and which energy figure was used
    assert "0.500 ± — (1)" not in md and "0.500 ± 0.000 (4)" in md  # updated %, fish, 4 runs pooled
    assert "kwh_power_integral" in md
    assert "| 150 ± 0 (4) |" in md  # peak MiB, fish
    # failed / unfinished section
    fail = md.split("## Failed, interrupted and unfinished runs")[1]
    assert "CUDA out of memory in step 7" in fail and "unfinished" in fail and "no summary.json" in fail
    assert str(sweep / "8") in fail and str(sweep / "9") in fail

    for name in ("score_vs_updated.png", "score_vs_energy.png", "memory_per_method.png"):
        assert _is_png(sweep / name), name
        assert f"![{name}]({name})" in md
    # no run measured sparsity.overall: updated/trainable fractions are never passed off as sparsity
    assert not (sweep / "score_vs_sparsity.png").exists()
    assert "`score_vs_sparsity.png`: skipped" in md and "sparsity.overall" in md
    # table printed to stdout
    assert "82.00 ± 2.83 (2)" in out and "| method |" in out


def test_evaluate_and_compress_runs_are_reported_apart_from_training(tmp_path: Path) -> None:
    """Issue 19, item 5: a `job=evaluate` run (summaries before the fix said `method: dense`) is not
    a dense training run, a compress run is not a training run of its compressor, and `job` /
    `source` are never searched hyper-parameters. They get their own table, beside their
    source run's score."""
    root = tmp_path / "runs"
    fish = []
    for i, seed in enumerate((1, 2)):
        d = root / f"fish{seed}"
        _write_run(d, {**_config("fish", "mrpc", seed, d), "job": "train", "source": None},
                   {**_summary("fish", "mrpc", seed, SCORES[("fish", "mrpc", seed)]), "job": "train"})
        fish.append(d)
    d = root / "eval"  # re-scores fish1's weights; recorded as today's main does (method: dense)
    _write_run(d, {**_config("dense", "mrpc", 1, d), "job": "evaluate", "source": str(fish[0])},
               {**_summary("dense", "mrpc", 1, 0.78), "job": "evaluate", "source": {"path": str(fish[0])}})
    d = root / "comp"  # compresses fish2's weights
    cfg = {**_config("fish", "mrpc", 2, d), "job": "compress", "source": str(fish[1])}
    cfg["method"] = {"name": "ere", "rank": 8}
    _write_run(d, cfg, {**_summary("ere", "mrpc", 2, 0.80), "job": "compress",
                        "source": {"path": str(fish[1]), "method": "fish", "main": 0.81, "score_drop": 0.01},
                        "storage": {"artifacts": {"ere.safetensors": {"bytes": 908_000, "ratio_to_dense_fp32": 0.01}}}})

    an = rep.analyse(rep.load_runs([root]))
    assert [(g.method, g.task, len(g.runs)) for g in an.groups] == [("fish", "mrpc", 2)]
    assert "job" not in an.settings and "source" not in an.settings and an.tuned_keys == []
    assert sorted(r.path.name for r in an.derived) == ["comp", "eval"]

    assert main([str(root), "-q"]) == 0
    md = (root / "report.md").read_text()
    results = md.split("## Evaluate and compress runs")[0]
    assert "| dense |" not in results and "| ere |" not in results  # no training row for either
    assert "79.50 ± 2.12 (2)" in results  # fish: its two training runs only
    assert "Searched hyper-parameters: none varies" in results and "`job`" not in results and "`source`" not in results
    derived = md.split("## Evaluate and compress runs")[1].split("## Failed")[0]
    assert f"| evaluate | fish | fish | mrpc | minilm | 1 | 78.00 | 78.00 | +0.00 | — | eval | {fish[0]} |" in derived
    assert f"| compress | ere | fish | mrpc | minilm | 2 | 80.00 | 81.00 | -1.00 | 1% | comp | {fish[1]} |" in derived

    from sparse_ft.report.costs import cost_rows

    rows = {(c.method, len(c.runs)) for c in cost_rows(rep.load_runs([root]))}
    assert ("fish", 2) in rows and ("ere (compress)", 1) in rows and ("dense (evaluate)", 1) in rows, rows


def test_cli_subprocess_compare_paper_and_out(sweep: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.report", str(sweep), "--out", str(out_dir),
                           "--compare", "paper"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "82.00 ± 2.83 (2)" in proc.stdout
    # paper numbers beside ours
    for s in ("82.5", "81.5", "−84%", "−56%", "6.0%", "+0.73", "30–50%", "93.9", "Sung, Nair & Raffel"):
        assert s in proc.stdout, s
    assert "69.75 over mrpc, rte" in proc.stdout  # ours for FISH, computed from the runs
    assert "72.00 over mrpc, rte" in proc.stdout  # ours for dense
    md = (out_dir / "report.md").read_text()
    assert "## Paper headline numbers beside ours" in md and "82.5" in md
    assert (out_dir / "results.csv").is_file() and _is_png(out_dir / "score_vs_updated.png")
    assert not (sweep / "report.md").exists()  # --out respected


def test_no_run_dirs_exits_nonzero(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert main([str(empty)]) != 0
    assert "no run directories" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "sparse_ft.report", str(empty)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no run directories" in proc.stderr


def test_import_does_not_pull_torch() -> None:
    code = ("import sys, sparse_ft.report, sparse_ft.report.paper, sparse_ft.report.plots, sparse_ft.jobs.hydra_callbacks; "
            "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_single_run_dir_and_skipped_plots(tmp_path: Path) -> None:
    """A plain run dir (not a sweep), no energy, no memory: those plots are skipped and said so."""
    run = tmp_path / "outputs" / "run1"
    s = _summary("fish", "mrpc", 1, 0.8)
    s["energy"] = {"available": False, "reason": "no GPU", "kwh_counter": None}
    s["memory"] = None
    del s["time"]
    _write_run(run, _config("fish", "mrpc", 1, run), s)
    assert main([str(run), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "80.00 ± — (1)" in md
    assert "GLUE avg" in md  # mrpc is GLUE
    assert not (tmp_path / "r" / "score_vs_energy.png").exists()
    assert not (tmp_path / "r" / "memory_per_method.png").exists()
    assert "`score_vs_energy.png`: skipped" in md and "`memory_per_method.png`: skipped" in md
    assert _is_png(tmp_path / "r" / "score_vs_updated.png")
    cols, rows = _read_csv(tmp_path / "r" / "results.csv")
    assert len(rows) == 1 and "trainer.lr" not in cols  # nothing varies with one run


def test_non_glue_task_has_no_glue_avg(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for i, seed in enumerate((1, 2)):
        d = root / str(i)
        cfg = _config("dense", "mrpc", seed, d)
        cfg["task"] = {"name": "cifar10"}
        s = _summary("dense", "cifar10", seed, 0.9 + seed / 100)
        _write_run(d, cfg, s)
    assert main([str(root), "--no-plots"]) == 0
    md = (root / "report.md").read_text()
    assert "GLUE avg" not in md and "91.50 ± 0.71 (2)" in md


def test_failed_runs_and_callback(sweep: Path, caplog) -> None:
    assert failed_runs(sweep) == [sweep / "8", sweep / "9"]
    from omegaconf import OmegaConf

    cb = ReportOnMultirunEnd()
    with caplog.at_level(logging.INFO):
        cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert (sweep / "results.csv").is_file() and (sweep / "report.md").is_file()
    assert _is_png(sweep / "score_vs_updated.png")
    assert cb.failed == [sweep / "8", sweep / "9"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "2 run(s)" in errors[-1].getMessage() and str(sweep / "8") in errors[-1].getMessage()
    assert any(str(sweep) in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_callback_never_raises(tmp_path: Path, caplog) -> None:
    from omegaconf import OmegaConf

    cb = ReportOnMultirunEnd()
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))
    assert cb.failed == [] and not (empty / "report.md").exists()
    cb.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}}))
    cb.on_multirun_end(OmegaConf.create({}))  # no hydra key at all
    assert failed_runs(tmp_path / "missing") == []


def test_callback_in_a_real_hydra_multirun(tmp_path: Path) -> None:
    """Hydra calls the callback at the end of `-m`; the report lands in the sweep dir."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import json, hydra
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        @hydra.main(version_base=None, config_path=".", config_name="cfg")
        def run(cfg):
            out = HydraConfig.get().runtime.output_dir
            OmegaConf.save(cfg, out + "/config.yaml", resolve=True)
            main = 0.7 + cfg.seed / 100
            ok = cfg.seed != 3
            s = {"status": "completed" if ok else "failed", "task": "mrpc", "method": cfg.method.name,
                 "model": "m", "seed": cfg.seed, "metrics": {"main": main},
                 "params": {"updated_fraction": 0.01}}
            if not ok:
                s["error"] = "boom"
            open(out + "/summary.json", "w").write(json.dumps(s))

        if __name__ == "__main__":
            run()
    """))
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent("""
        seed: 1
        method: {name: fish}
        hydra:
          callbacks:
            report:
              _target_: sparse_ft.jobs.hydra_callbacks.ReportOnMultirunEnd
    """))
    sweep_dir = tmp_path / "sw"
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(app), "-m", "seed=1,2,3", f"hydra.sweep.dir={sweep_dir}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    md = (sweep_dir / "report.md").read_text()
    assert "71.50 ± 0.71 (2)" in md  # 0.71, 0.72 (seeds 1, 2); seed 3 failed
    assert "boom" in md
    assert "did not complete" in proc.stdout + proc.stderr
    _, rows = _read_csv(sweep_dir / "results.csv")
    assert [r["seed"] for r in rows] == ["1", "2", "3"]


def test_helpers() -> None:
    assert rep.fmt_cell([0.80, 0.84], 100, 2) == "82.00 ± 2.83 (2)"
    assert rep.fmt_cell([0.5], 100, 2) == "50.00 ± — (1)"
    assert rep.fmt_cell([None, float("nan")]) == "—"
    assert rep.is_glue_task("MRPC") and rep.is_glue_task("sst-2") and rep.is_glue_task("mnli_mm")
    assert not rep.is_glue_task("cifar10")
    assert rep.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_null_blocks_and_missing_status_are_tolerated(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    s = _summary("bitfit", "mrpc", 1, 0.7)
    for k in ("best", "params", "storage", "energy", "memory", "time", "communication", "data"):
        s[k] = None
    _write_run(root / "0", _config("dense", "mrpc", 1, root / "0"), s)
    s2 = _summary("bitfit", "mrpc", 2, 0.5)
    del s2["status"]  # no status: not trusted as completed
    _write_run(root / "1", _config("dense", "mrpc", 2, root / "1"), s2)
    (root / "2").mkdir()
    (root / "2" / "summary.json").write_text("{truncated")  # partially written
    assert main([str(root)]) == 0
    md = (root / "report.md").read_text()
    assert "70.00 ± — (1)" in md
    fail = md.split("## Failed")[1]
    assert "unknown" in fail and "summary.json unreadable" in fail
    assert "`score_vs_updated.png`: skipped" in md
    _, rows = _read_csv(root / "results.csv")
    assert [r["status"] for r in rows] == ["completed", "unknown", "unfinished"]


def test_paper_comparison_kinds() -> None:
    from sparse_ft.report.paper import PAPER_HEADLINES, comparison_rows

    def rec(method, task="mrpc", main=0.8, **kw):
        base = {"method": method, "method_raw": method, "task": task, "setting": "", "main": main,
                "test_main": None, "energy": None, "mem": None, "updated_fraction": None,
                "trainable_fraction": None, "storage_ratio": None, "sparsity": None}
        base.update(kw)
        return base

    recs = [
        rec("dense", main=0.80, energy=1.0, mem=100.0, sparsity=0.0),
        rec("read", main=0.79, energy=0.2, mem=40.0),
        rec("pst", main=0.78, sparsity=0.9, trainable_fraction=0.015),
        rec("mvp", main=0.76, sparsity=0.9), rec("map", main=0.75, sparsity=0.9),
        rec("omp", main=0.795, sparsity=0.3), rec("omp", main=0.792, sparsity=0.5),
        rec("omp", main=0.70, sparsity=0.7),
        rec("ere", main=0.79, storage_ratio=0.06),
        rec("diff_pruning", main=0.7, test_main=0.75),
    ]
    ours = {(h["method"], h["kind"], h.get("field")): row[4]
            for h, row in zip(PAPER_HEADLINES, comparison_rows(recs, 100.0))}
    assert ours[("read", "rel_vs_dense", "energy")] == "-80.0% on mrpc"
    assert ours[("read", "rel_vs_dense", "mem")] == "-60.0% on mrpc"
    assert ours[("pst", "trainable_pct", None)] == "1.5% trainable"
    assert ours[("pst", "delta_vs", None)].startswith("+2.00")
    assert ours[("omp", "essential_sparsity", None)] == "mrpc: 50%"
    assert ours[("ere", "storage_pct", None)].startswith("6%")
    assert ours[("diff_pruning", "glue_avg_test", None)].startswith("75.00 over mrpc")
    assert all(h["paper"] in ("FISH", "PST", "ESS", "READ", "ERE") for h in PAPER_HEADLINES)
