"""The cost table (report/costs.py), the FISH section (report/papers/fish.py) and the reproduction
report (report/reproduce.py, `python -m sparse_ft.report ... --reproduce|--costs|--essential`) on
fixture run directories laid out like real ones (config.yaml + summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("matplotlib")

from sparse_ft.report import main as report_main  # noqa: E402
from sparse_ft.report.collect import load_runs  # noqa: E402
from sparse_ft.report.costs import HEADER, cost_rows, cost_table  # noqa: E402
from sparse_ft.report.papers import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, UNDECIDABLE, fish  # noqa: E402
from sparse_ft.report.reproduce import covered_seconds, write_reproduction  # noqa: E402

MiB = 1 << 20


def _run(root: Path, name: str, method: str, main: float, seed: int = 1, method_cfg: dict | None = None,
         task: str = "synthetic_nli", model: str = "minilm", extra: dict | None = None, majority: float = 0.5,
         lr: float = 1e-3, test: float | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"job": "train", "seed": seed, "model": {"name": model}, "task": {"name": task},
              "method": {"name": method, **(method_cfg or {})}, "trainer": {"lr": lr, "epochs": 1}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"status": "completed", "job": "train", "task": task, "method": method, "model": model, "seed": seed,
               "git_commit": "abc1234def", "num_threads": 2, "versions": {"torch": "2.14.1"},
               "metrics": {"validation": {"accuracy": main, "main": main}, "main": main},
               "params": {"total": 1000, "trainable": 10, "updated": 9, "added": 0,
                          "updated_fraction": 0.009, "trainable_fraction": 0.01},
               "optimizer": {"kind": "AdamW", "param_elements": 10, "state_elements": 20, "state_bytes": 2 * MiB},
               "time": {"wall_s": {"train": 12.0, "total": 20.0}, "train_samples_per_s": 100.0},
               "memory": {"device": "cpu", "peak_bytes": {"train": 300 * MiB}},
               "energy": {"available": False, "reason": "no GPU (NVML: library not found)"},
               "storage": {"dense_fp32_bytes": 4000, "artifacts": {
                   "checkpoints/final/model.safetensors": {"bytes": 4000, "ratio_to_dense_fp32": 1.0},
                   "delta.safetensors": {"bytes": 40, "ratio_to_dense_fp32": 0.01},
                   # smaller, but they do not restore the result: never the artifact column's choice
                   "mask.safetensors": {"bytes": 20, "ratio_to_dense_fp32": 0.005},
                   "checkpoints/last/manifest.json": {"bytes": 2, "ratio_to_dense_fp32": 0.0005}}}}
    summary["data"] = {"train": 64, "validation": 32, "majority_class_score": {"validation": majority, "test": majority}}
    if test is not None:
        summary["metrics"]["test"] = {"accuracy": test, "main": test}
    for k, v in (extra or {}).items():
        summary[k] = v
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def _fish_grid(root: Path, fish_wins: bool = True, majority: float = 0.5) -> None:
    for seed in (1, 2, 3):
        jitter = (seed - 2) * 0.002  # a small spread over seeds
        _run(root, f"dense{seed}", "dense", 0.90 + jitter, seed, majority=majority)
        for d in (0.001, 0.005, 0.02):
            hi, lo = 0.895, 0.80
            _run(root, f"fish{d}_{seed}", "fish", (hi if fish_wins else lo) + jitter, seed, {"density": d, "num_samples": 256},
                 majority=majority)
            _run(root, f"rand{d}_{seed}", "random_mask", (lo if fish_wins else hi) - jitter, seed, {"density": d}, majority=majority)
        for n, score in ((0, 0.80), (8, 0.85), (32, 0.895), (128, 0.897), (1024, 0.898)):
            _run(root, f"samples{n}_{seed}", "fish", score + jitter, seed, {"density": 0.005, "num_samples": n}, majority=majority,
                 extra={"method_report": {"mask_by_type": {"bert.pooler.dense.weight": 80, "classifier.weight": 20}}})


def test_cost_table_has_every_figure_with_units_and_says_why_one_is_missing(tmp_path):
    _run(tmp_path, "a", "fish", 0.9, 1, {"density": 0.005}, extra={"inference": {"latency_ms_median": 3.5}})
    _run(tmp_path, "b", "fish", 0.8, 2, {"density": 0.005})
    table = cost_table(load_runs([tmp_path]))
    assert all(h in table for h in HEADER) and "MiB" in HEADER[10] and "kWh" in HEADER[14]
    row = [line for line in table.splitlines() if line.startswith("| fish")]
    assert len(row) == 1  # two seeds pooled into one row
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[4] == "2" and cells[5].startswith("85.00 ±")  # seeds, mean ± std ×100
    assert cells[10] == "2.00"  # optimizer state MiB, measured
    assert cells[14] == "n/a: no GPU"  # energy: the run's own reason, never 0
    assert cells[15] == "3.5"  # latency: the mean of the one run that measured it
    assert "delta.safetensors" in cells[16] and "1% of dense" in cells[16]  # the smallest artifact
    assert cells[17] == "n/a: one process"


def test_cost_rows_split_settings_of_one_method(tmp_path):
    _run(tmp_path, "a", "fish", 0.9, 1, {"density": 0.005})
    _run(tmp_path, "b", "fish", 0.8, 1, {"density": 0.02})
    rows = cost_rows(load_runs([tmp_path]))
    assert sorted(r.setting for r in rows) == ["method.density=0.005", "method.density=0.02"]


def test_compress_runs_say_they_did_not_train(tmp_path):
    run = _run(tmp_path, "c", "ere", 0.9)
    s = json.loads((run / "summary.json").read_text())
    s["job"] = "compress"
    for k in ("optimizer", "time", "memory"):
        s.pop(k)
    (run / "summary.json").write_text(json.dumps(s))
    assert "n/a: compress job, no training" in cost_table(load_runs([tmp_path]))


@pytest.mark.parametrize("fish_wins", [True, False])
def test_fish_claims_follow_the_scores(tmp_path, fish_wins):
    _fish_grid(tmp_path, fish_wins)
    sec = fish.section(load_runs([tmp_path]), tmp_path, plots=False)
    verdicts = {c.claim.split(" ")[1]: c.verdict for c in sec.claims}  # "at", "beats", "Fisher"
    expected = HOLDS if fish_wins else DOES_NOT_HOLD
    assert verdicts["at"] == expected and verdicts["beats"] == expected
    assert verdicts["Fisher"] == HOLDS  # N = 32 within 1 point of the best N and above N = 0
    assert "0 (random mask)" in sec.markdown and "bert.pooler.dense.weight: 80.0%" in sec.markdown
    assert "| minilm | synthetic_nli | 50.00 |" in sec.markdown  # the majority-class control beside the claims
    assert "BitFit score" not in sec.markdown  # none run
    _run(tmp_path, "bitfit", "bitfit", 0.85, 1)
    _run(tmp_path, "dp", "diff_pruning", 0.87, 1, {"density": 0.005})
    sec = fish.section(load_runs([tmp_path]), tmp_path, plots=False)
    assert "| minilm | synthetic_nli | 85.00 ± — (1) | 87.00 ± — (1) at 0.5% |" in sec.markdown


def test_fish_claims_undecidable_when_the_proxy_cannot_tell(tmp_path):
    # dense (90.0) only 5 points above the majority class (85.0): nothing can be decided
    _fish_grid(tmp_path / "floor", True, majority=0.85)
    sec = fish.section(load_runs([tmp_path / "floor"]), tmp_path, plots=False)
    assert [c.verdict for c in sec.claims] == [UNDECIDABLE] * 3
    assert all("dense only 5.0 points above the majority class" in c.ours for c in sec.claims)
    # one seed of each: fewer than 3 seeds
    for name, method, main, cfg in (("d", "dense", 0.9, {}), ("f", "fish", 0.895, {"density": 0.005, "num_samples": 256}),
                                    ("r", "random_mask", 0.8, {"density": 0.005})):
        _run(tmp_path / "one", name, method, main, 1, cfg)
    claims = fish.section(load_runs([tmp_path / "one"]), tmp_path, plots=False).claims
    assert claims[0].verdict == claims[1].verdict == UNDECIDABLE and "fewer than 3 seeds" in claims[1].ours


def test_fish_section_absent_or_not_measurable(tmp_path):
    _run(tmp_path, "d", "dense", 0.9)
    assert fish.section(load_runs([tmp_path]), tmp_path) is None
    _run(tmp_path, "f", "fish", 0.9, 1, {"density": 0.02, "num_samples": 256})
    sec = fish.section(load_runs([tmp_path]), tmp_path, plots=False)
    assert [c.verdict for c in sec.claims] == [NOT_MEASURABLE] * 3


def test_fish_section_selects_the_lr_on_validation_and_reports_the_held_out_score(tmp_path):
    # two lrs per setting: the one better on validation is kept, and its test scores are what the claims read
    for seed in (1, 2, 3):
        j = (seed - 2) * 0.002
        for lr, (val, test) in ((1e-4, (0.70, 0.99)), (1e-3, (0.90, 0.85))):  # 1e-4's test score must never be read
            _run(tmp_path, f"dense_{lr}_{seed}", "dense", val + j, seed, lr=lr, test=test + j)
        for lr, (val, test) in ((1e-3, (0.88, 0.845)), (3e-3, (0.60, 0.99))):
            _run(tmp_path, f"fish_{lr}_{seed}", "fish", val + j, seed, {"density": 0.005, "num_samples": 256}, lr=lr, test=test + j)
            _run(tmp_path, f"rand_{lr}_{seed}", "random_mask", val - 0.2 + j, seed, {"density": 0.005}, lr=lr, test=test - 0.2 + j)
    at, beats, _ = fish.section(load_runs([tmp_path]), tmp_path, plots=False).claims
    assert at.verdict == HOLDS and "FISH 0.5% 84.50 ± 0.20 (n=3) vs dense 85.00 ± 0.20 (n=3)" in at.ours
    assert beats.verdict == HOLDS and "FISH 84.50 ± 0.20 (n=3) vs random 64.50" in beats.ours


def test_reproduction_report_from_run_dirs_and_the_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    _fish_grid(runs)
    for seed in (1, 2, 3):
        for s, main in ((0.0, 0.90), (0.5, 0.895), (0.9, 0.70)):
            _run(runs, f"omp{s}_{seed}", "omp", main + (seed - 2) / 1000, seed,
                 {"sparsity": s, "scope": "global", "pattern": "unstructured", "score": "magnitude"}, extra={"sparsity": {"overall": s}})
    (runs / "reproduce_wall.txt").write_text("1000 4600\n5000 8600\n6000 8000\n")  # 3 invocations, the last beside the 2nd
    out = tmp_path / "docs"
    rep = write_reproduction([runs], out)
    text = rep.path.read_text()
    assert rep.path == out / "README.md" and (out / "essential_drop_vs_sparsity.png").is_file()
    assert "## Verdicts" in text and "## Costs of every method" in text and "abc1234def" in text
    assert {c.paper for c in rep.claims} == {"FISH", "ESS"}
    ess = next(c for c in rep.claims if c.paper == "ESS" and c.claim.startswith("OMP sparsity"))
    assert "| ESS | OMP sparsity" in text and ess.verdict == HOLDS  # ES 50% ≥ 30%, 3 seeds, outside seed noise
    assert "undecidable on this proxy" in text and "Welch t-interval" in text  # the rules are stated
    assert "Reproduction wall time: 2.00 h over 3 invocation(s)" in text  # an overlapping lane counts once
    # the CLI modes
    assert report_main([str(runs), "--costs", "--out", str(tmp_path / "c"), "-q"]) == 0
    assert (tmp_path / "c" / "costs.md").read_text().startswith("# Costs of every method")
    assert report_main([str(runs), "--essential", "--out", str(tmp_path / "e"), "-q"]) == 0
    assert "essential sparsity" in (tmp_path / "e" / "essential.md").read_text()
    assert report_main([str(runs), "--reproduce", "--out", str(tmp_path / "r"), "-q"]) == 0
    assert (tmp_path / "r" / "README.md").read_text() == text.replace(str(out), str(tmp_path / "r"))
    assert report_main([str(tmp_path / "nothing"), "--reproduce", "-q"]) == 2
    capsys.readouterr()


def test_covered_seconds_counts_overlapping_invocations_once():
    assert covered_seconds([]) == 0
    assert covered_seconds([(0, 10), (20, 30)]) == 20
    assert covered_seconds([(0, 10), (5, 15), (6, 8)]) == 15  # side-by-side lanes
    assert covered_seconds([(20, 30), (0, 10), (10, 20)]) == 30  # order and touching ends
