"""The ERE section of the reproduction report (sparse_ft/report/papers/ere.py), on small fixture run
directories laid out like a real `job=compress` run's (summary.json, config.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sparse_ft.report.collect import load_runs
from sparse_ft.report.papers import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, UNDECIDABLE, VERDICTS, builder
from sparse_ft.report.papers import ere as ere_section

DENSE = 90_866_440  # MiniLM's dense fp32 checkpoint


def _write(run_dir: Path, config: dict, summary: dict) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def _metrics(acc: float, f1: float) -> dict:
    main = (acc + f1) / 2
    return {"validation": {"accuracy": acc, "f1": f1, "acc_and_f1": main, "main": main, "invalid_predictions": 0},
            "main": main}


def source_run(root: Path, acc=0.80, f1=0.86, name="src") -> Path:
    config = {"job": "train", "source": None, "seed": 42, "model": {"name": "minilm"}, "task": {"name": "mrpc"},
              "method": {"name": "dense"}}
    summary = {"status": "completed", "job": "train", "task": "mrpc", "method": "dense", "model": "minilm", "seed": 42,
               "metrics": _metrics(acc, f1),
               "storage": {"dense_fp32_bytes": DENSE, "artifacts": {"checkpoints/final/model.safetensors":
                                                                    {"bytes": DENSE + 4000, "ratio_to_dense_fp32": 1.00004}}}}
    return _write(root / name, config, summary)


def compress_run(root: Path, source: Path, method: str, opts: dict, pct: float, acc: float, f1: float,
                 name: str | None = None, source_main: float | None = None, majority: float = 0.5,
                 fidelity: tuple[float, float] | None = None) -> Path:
    size = int(pct / 100 * DENSE)
    artifact = f"{method}.safetensors"
    config = {"job": "compress", "source": str(source), "seed": 42, "model": {"name": "minilm"},
              "task": {"name": "mrpc"}, "method": {"name": method, **opts}}
    src_main = source_main
    if src_main is None:
        src_main = json.loads((source / "summary.json").read_text())["metrics"]["main"]
    m = _metrics(acc, f1)
    summary = {"status": "completed", "job": "compress", "task": "mrpc", "method": method, "model": "minilm", "seed": 42,
               "data": {"train": 3668, "validation": 408, "majority_class_score": {"validation": majority}}, "metrics": m,
               "source": {"path": str(source), "method": "dense", "main": src_main, "score_drop": src_main - m["main"]},
               "storage": {"dense_fp32_bytes": DENSE, "artifacts": {artifact: {"bytes": size, "ratio_to_dense_fp32": size / DENSE}}},
               "method_report": {"method": method, "artifact": artifact, "bytes": {"total": size},
                                 "dense_fp32_bytes": DENSE, "storage_ratio": size / DENSE},
               "time": {"wall_s": {"setup": 9.0, "compress": 12.5, "eval": 8.0, "total": 30.0}}}
    if fidelity is not None:
        summary["fidelity"] = {"split": "validation", "agreement": fidelity[0], "kl_mean": fidelity[1], "examples": 408}
    tag = name or f"{method}_" + "_".join(f"{k}{v}" for k, v in opts.items())
    return _write(root / tag, config, summary)


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "runs"
    src = source_run(root)
    ere = {"alpha": 0.5, "budget_fraction": None, "stiefel": True}
    compress_run(root, src, "ere", {**ere, "rank_prior": 8, "bits": 4}, 0.9, 0.78, 0.845)   # drop 2 main
    compress_run(root, src, "ere", {**ere, "rank_prior": 64, "bits": 4}, 3.1, 0.797, 0.858)  # within
    compress_run(root, src, "ere", {**ere, "rank_prior": 256, "bits": 4}, 11.2, 0.80, 0.86)  # within, over 10%
    compress_run(root, src, "bitq", {"bits": 2, "axis": "row"}, 6.4, 0.70, 0.80)
    compress_run(root, src, "bitq", {"bits": 4, "axis": "row"}, 12.6, 0.80, 0.862)
    compress_run(root, src, "lra", {"rank": 8, "dtype": "float16"}, 1.3, 0.75, 0.82)
    compress_run(root, src, "lra", {"rank": 32, "dtype": "float16"}, 5.3, 0.79, 0.85)
    return root


def test_section_pairs_each_compress_run_with_its_source_and_finds_the_budget(sweep, tmp_path):
    runs = load_runs([sweep])
    sec = builder("ere")(runs, tmp_path / "out", plots=False)
    assert sec is not None and sec.files == []
    points = ere_section.collect_points(runs)
    assert len(points) == 7 and {p.method for p in points} == {"ere", "bitq", "lra"}
    r8 = next(p for p in points if p.method == "ere" and p.rank == 8)
    assert r8.source_score == pytest.approx(83.0) and r8.score == pytest.approx(81.25)
    assert r8.drop == pytest.approx(1.75) and r8.f1_drop == pytest.approx(1.5)
    assert r8.storage_pct == pytest.approx(0.9, rel=1e-5)
    best = ere_section.cheapest_within(ere_section._by(points, method="ere"))
    assert (best.rank, best.bits) == (64, 4)
    md = sec.markdown
    assert "storage (% of dense fp32)" in md and "drop (pts)" in md and "F1 drop (pts)" in md
    assert "| ERE | 64 | 4 | 3.1% |" in md  # method × setting rows: r, b, storage %
    assert "| minilm / mrpc | ERE | r=64, b=4 | 3.1% |" in md  # the least storage within 1 point
    assert "| minilm / mrpc | BITQ | r" not in md and "BITQ | b=4 | 12.6%" in md


def test_claims_hold_when_ere_reaches_one_point_under_ten_percent_and_beats_the_baselines(sweep, tmp_path):
    sec = builder("ere")(load_runs([sweep]), tmp_path / "out", plots=False)
    assert [c.paper for c in sec.claims] == ["ERE"] * 3
    assert all(c.verdict in VERDICTS for c in sec.claims)
    storage, score, beats = sec.claims
    assert "6.0%" in storage.claim and storage.paper_value.startswith("6.0%")
    assert storage.verdict == HOLDS and "3.1% of dense" in storage.ours and "minilm on mrpc" in storage.ours
    assert "r=256, b=4: 11.2%" in storage.ours  # the paper's setting, where measured
    assert "89.2" in score.claim and "89.4" in score.claim
    assert score.verdict == HOLDS and "r=64, b=4" in score.ours and "not a GLUE average" in score.ours
    # BITQ b=2 (6.4%, 75) and b=4 (12.6%, 83.1) vs ERE ≤ that storage (r=64: 82.75; r=256 at 11.2%: 83.0):
    # BITQ b=4 scores 0.1 more than ERE, less than one of 408 validation examples (0.245 pts): a tie
    assert beats.verdict == HOLDS
    assert "vs BITQ: ERE at ≤ the storage scores ≥ it (or within one validation example) for 2 of 2" in beats.ours
    assert "tie: BITQ b=4 (12.6%: 83.10) vs ERE r=256, b=4 (11.2%: 83.00)" in beats.ours
    assert "vs LRA: ERE at ≤ the storage scores ≥ it (or within one validation example) for 2 of 2" in beats.ours


def test_a_baseline_better_than_ere_at_no_more_storage_by_more_than_one_example_does_not_hold(tmp_path):
    root = tmp_path / "runs"
    src = source_run(root)
    compress_run(root, src, "ere", {"rank_prior": 16, "bits": 4}, 1.5, 0.77, 0.84)
    compress_run(root, src, "lra", {"rank": 16, "dtype": "float16"}, 2.8, 0.79, 0.85)  # 1.5 pts better
    compress_run(root, src, "lra", {"rank": 2, "dtype": "float16"}, 0.4, 0.70, 0.80)  # no ERE at ≤ 0.4%
    beats = builder("ere")(load_runs([root]), tmp_path / "out", plots=False).claims[2]
    assert beats.verdict == DOES_NOT_HOLD
    assert "for 0 of 1 LRA settings (not: LRA r=16 (2.8%: 82.00) > best ERE" in beats.ours


def test_no_ere_setting_within_one_point_does_not_hold_and_names_the_least_drop(tmp_path):
    root = tmp_path / "runs"
    src = source_run(root)
    compress_run(root, src, "ere", {"rank_prior": 8, "bits": 4}, 0.9, 0.70, 0.80)
    compress_run(root, src, "ere", {"rank_prior": 16, "bits": 4}, 1.5, 0.76, 0.83)
    sec = builder("ere")(load_runs([root]), tmp_path / "out", plots=False)
    storage, score, beats = sec.claims
    assert storage.verdict == DOES_NOT_HOLD and "no ERE setting within 1 point" in storage.ours
    assert "r=16, b=4" in storage.ours  # the least drop
    assert score.verdict == DOES_NOT_HOLD
    assert beats.verdict == NOT_MEASURABLE and beats.ours.startswith("n/a:")
    assert "none of 2" in sec.markdown
    assert "the least storage measured (ERE r=8, b=4, 0.9%) loses 8.00 pts main, 6.00 pts F1" in sec.markdown


def test_a_source_no_longer_on_disk_uses_the_score_the_compress_run_copied(tmp_path):
    root = tmp_path / "runs"
    gone = tmp_path / "elsewhere" / "src"
    compress_run(root, gone, "ere", {"rank_prior": 16, "bits": 4}, 1.5, 0.80, 0.86, source_main=0.83)
    (p,) = ere_section.collect_points(load_runs([root]))
    assert p.source_score == pytest.approx(83.0) and p.drop == pytest.approx(0.0)
    assert p.source_f1 is None and p.f1_drop is None  # the F1 of a missing source is unknown, not 0


def test_claims_undecidable_when_the_source_sits_near_the_majority_class(tmp_path):
    # MRPC: predicting "paraphrase" everywhere scores main 74.80; the source's 83.0 is 8.2 points above it
    root = tmp_path / "runs"
    src = source_run(root)
    ere = {"alpha": 0.5, "budget_fraction": None, "stiefel": True, "bits": 4}
    compress_run(root, src, "ere", {**ere, "rank_prior": 64}, 3.1, 0.797, 0.858, majority=0.748, fidelity=(0.975, 0.0123))
    compress_run(root, src, "ere", {**ere, "rank_prior": 0}, 0.4, 0.70, 0.81, majority=0.748, fidelity=(0.80, 0.31))
    compress_run(root, src, "bitq", {"bits": 4, "axis": "row"}, 12.6, 0.79, 0.85, majority=0.748)
    sec = builder("ere")(load_runs([root]), tmp_path / "out", plots=False)
    storage, score, baselines = sec.claims
    assert storage.verdict == score.verdict == baselines.verdict == UNDECIDABLE
    assert "the uncompressed source only 8.2 points above the majority class (74.80" in storage.ours
    # fidelity beside the score, and the rank-0 control
    row = next(line for line in sec.markdown.splitlines() if line.startswith("| ERE | 64 |"))
    assert "| 97.50 | 0.0123 |" in row
    assert "minilm / mrpc: rank 0 scores 75.50 (drop 7.50 pts, 0.4% of dense, agreement with θ' 80.0%)" in sec.markdown


def test_no_compress_runs_gives_none(tmp_path):
    root = tmp_path / "runs"
    source_run(root)
    assert builder("ere")(load_runs([root]), tmp_path / "out") is None
    assert builder("ere")([], tmp_path / "out") is None


def test_failed_compress_runs_are_left_out(sweep, tmp_path):
    bad = sweep / "ere_failed"
    bad.mkdir()
    (bad / "config.yaml").write_text(yaml.safe_dump({"job": "compress", "method": {"name": "ere"}}))
    (bad / "summary.json").write_text(json.dumps({"status": "failed", "job": "compress", "method": "ere",
                                                  "error": "boom"}))
    assert len(ere_section.collect_points(load_runs([sweep]))) == 7


def test_the_plot_is_written_with_a_series_per_method_and_the_dense_point(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    runs = load_runs([sweep])
    sec = builder("ere")(runs, out, plots=True)
    assert sec.files == [out / ere_section.PLOT] and (out / ere_section.PLOT).stat().st_size > 1000
    assert f"]({ere_section.PLOT})" in sec.markdown
    fig = ere_section.score_vs_storage_figure(ere_section.collect_points(runs))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines()]
    assert {"ERE", "BITQ", "LRA", "uncompressed (fp32)"} <= set(labels)
    dense = next(line for line in ax.get_lines() if line.get_label() == "uncompressed (fp32)")
    assert list(dense.get_xdata()) == [100.0] and list(dense.get_ydata()) == [pytest.approx(83.0)]
