"""The pruning papers' report sections (report/papers/essential.py, report/papers/pst.py) on
fixture run directories laid out like real ones (config.yaml + summary.json, as
`python run.py method=omp model=tiny_bert task=synthetic_nli ...` writes them; IMP runs also
`masks/rounds.json`): the essential sparsity and knee on known curves, measured (not configured)
sparsity on the x axis, both pruning criteria side by side, the IMP/OMP mask-cosine figure, PST's
claims flipping with the scores, and no section without relevant runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("matplotlib")

from sparse_ft.report.collect import load_runs  # noqa: E402
from sparse_ft.report.papers import DOES_NOT_HOLD, HOLDS, NOT_MEASURABLE, UNDECIDABLE, builder, essential, pst  # noqa: E402

MODEL, TASK = "bert_base", "synthetic_nli"
PNG = b"\x89PNG\r\n\x1a\n"


def _write(root: Path, name: str, method: str, main: float, seed: int = 1, model: str = MODEL, task: str = TASK,
           sparsity: float | None = None, method_cfg: dict | None = None, trainable_fraction: float = 0.99,
           rounds: list[dict] | None = None, status: str = "completed", random_init: bool = False,
           mvp_basis: float | None = None, method_report: dict | None = None, majority: float = 0.5) -> Path:
    """A run directory with the keys a real run writes (trimmed to what the report reads)."""
    run = root / name
    run.mkdir(parents=True)
    config = {"job": "train", "source": None, "seed": seed, "name": None,
              "model": {"name": model, "arch": "encoder", "random_init": random_init},
              "task": {"name": task, "kind": task},
              "method": {"name": method, **(method_cfg or {})},
              "trainer": {"optimizer": "adamw", "lr": 5e-5, "epochs": 3, "batch_size": 32},
              "distributed": {"mode": "none"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    total = 1011426
    summary = {"status": status, "job": "train", "task": task, "method": method, "model": model, "seed": seed,
               "data": {"train": 2000, "validation": 500, "test": 500, "majority_class_score": {"validation": majority}},
               "metrics": {"validation": {"accuracy": main, "main": main}, "main": main},
               "best": {"step": 5, "main": main},
               "params": {"total": total, "trainable": int(trainable_fraction * total), "updated": 1000, "added": 0,
                          "updated_fraction": 1000 / total, "trainable_fraction": trainable_fraction}}
    if mvp_basis is not None:
        summary["params"]["trainable_fraction_mvp_basis"] = mvp_basis
    if sparsity is not None:
        block = {"overall": sparsity, "zeros": int(sparsity * 16384), "prunable": 16384,
                 "per_layer": {"bert.encoder.layer.0.attention.self.query.weight": sparsity},
                 "target": (method_cfg or {}).get("sparsity"), "scope": "global", "pattern": "unstructured"}
        summary["sparsity"] = block
        summary["method_report"] = {"sparsity": block}
    if rounds is not None:
        (run / "masks").mkdir()
        (run / "masks" / "rounds.json").write_text(json.dumps(rounds, indent=2))
        summary.setdefault("method_report", {})["rounds"] = rounds
    if method_report:
        summary.setdefault("method_report", {}).update(method_report)
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return run


def _omp(root: Path, name: str, measured: float, main: float, seed: int = 1, configured: float | None = None, **cfg) -> Path:
    return _write(root, name, "omp", main, seed, sparsity=measured,
                  method_cfg={"sparsity": measured if configured is None else configured, "scope": "global",
                              "pattern": "unstructured", "score": "magnitude", **cfg})


def _known_curve(root: Path) -> None:
    """Dense 80.0 (three seeds, ±0.1 point); OMP drops 0.0, 0.5, 1.5, 20 points at measured 10.0/29.87/49.9/70.1%.
    The configured sparsities are deliberately different (0.2/0.6/0.8/0.9): the report must use
    the measured ones."""
    for seed in (1, 2, 3):
        _write(root, f"dense{seed}", "dense", 0.80 + (seed - 2) / 1000, seed=seed, trainable_fraction=1.0)
    for i, (measured, configured, main) in enumerate([(0.100, 0.2, 0.80), (0.2987, 0.6, 0.795), (0.499, 0.8, 0.785), (0.701, 0.9, 0.60)]):
        for seed in (1, 2, 3):
            _omp(root, f"omp{i}_{seed}", measured, main + (seed - 2) / 1000, seed=seed, configured=configured)


# ----------------------------------------------------------------------------- essential sparsity
def test_essential_and_knee_on_a_known_curve():
    curve = [(0.0, 0.0), (0.1, 0.2), (0.3, 1.0), (0.5, 1.5), (0.7, 0.4), (0.9, 12.0)]
    assert essential.essential_and_knee(curve) == (0.3, 0.5)  # ε = 1 counts as within; the recovery at 70% does not
    assert essential.essential_and_knee(sorted(curve, reverse=True)) == (0.3, 0.5)  # order of the input does not matter
    assert essential.essential_and_knee([(0.0, 0.0), (0.2, 0.5), (0.4, 0.9)]) == (0.4, None)  # the knee is not reached
    assert essential.essential_and_knee([(0.0, 0.0), (0.1, 3.0)]) == (0.0, 0.1)
    assert essential.essential_and_knee([]) == (None, None)


def test_essential_section_reads_measured_sparsity_and_writes_es_and_knee(tmp_path):
    _known_curve(tmp_path / "runs")
    runs = load_runs([tmp_path / "runs"])
    out = tmp_path / "out"
    out.mkdir()
    sec = essential.section(runs, out)
    assert sec is not None
    (curve,) = essential.build_curves(runs)
    assert curve.dense_score == pytest.approx(0.80)
    assert [round(p.sparsity, 4) for p in curve.points] == [0.1, 0.2987, 0.499, 0.701]  # measured, not configured
    assert [round(curve.drop(p), 6) for p in curve.points] == [0.0, 0.5, 1.5, 20.0]
    assert essential.essential_and_knee(curve.all_points()) == (pytest.approx(0.2987), pytest.approx(0.499))
    row = next(line for line in sec.markdown.splitlines() if line.startswith("| bert_base | synthetic_nli | magnitude | 80.00"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "29.9%" and cells[6] == "49.9%" and cells[7] == "1.50"  # ES, knee, drop at the knee
    assert "essential sparsity (%, measured)" in sec.markdown and "knee (%, first drop > ε)" in sec.markdown
    assert "| 49.90 | 80 |" in sec.markdown  # the curve table: measured 49.90% beside the configured 80%
    (claim, cos_claim) = sec.claims
    assert claim.paper == "ESS" and claim.paper_value == "30–50%"
    assert claim.verdict == DOES_NOT_HOLD and "ES 29.9%, knee 49.9%" in claim.ours and "bert_base/synthetic_nli" in claim.ours
    assert cos_claim.verdict == NOT_MEASURABLE and cos_claim.ours.startswith("n/a")
    assert out / essential.CURVE_PLOT in sec.files and (out / essential.CURVE_PLOT).read_bytes()[:8] == PNG


def test_essential_claim_holds_above_30_and_is_not_measurable_on_a_short_grid(tmp_path):
    root = tmp_path / "holds"
    _omp(root, "a", 0.0, 0.802)  # OMP at measured 0 counts as dense too
    for seed in (1, 2, 3):
        j = (seed - 2) / 1000
        _write(root, f"dense{seed}", "dense", 0.80 + j, seed=seed)
        _omp(root, f"b{seed}", 0.4, 0.795 + j, seed=seed)
        _omp(root, f"c{seed}", 0.6, 0.70 + j, seed=seed)
    sec = essential.section(load_runs([root]), tmp_path, plots=False)
    assert sec.claims[0].verdict == HOLDS and "ES 40.0%, knee 60.0%" in sec.claims[0].ours
    assert sec.files == []  # plots=False
    assert "bert_base/synthetic_nli: majority class 50.00; dense" in sec.markdown  # the control beside the claim

    short = tmp_path / "short"
    _write(short, "dense", "dense", 0.80)
    _omp(short, "b", 0.2, 0.80)
    sec = essential.section(load_runs([short]), tmp_path, plots=False)
    assert sec.claims[0].verdict == NOT_MEASURABLE and "knee not reached" in sec.claims[0].ours
    assert "(lower bound)" in sec.markdown

    nodense = tmp_path / "nodense"
    _omp(nodense, "b", 0.5, 0.80)
    sec = essential.section(load_runs([nodense]), tmp_path, plots=False)
    assert sec.claims[0].verdict == NOT_MEASURABLE and "n/a: no dense or 0% run" in sec.markdown


def test_essential_claim_undecidable_at_the_majority_class_in_seed_noise_or_with_few_seeds(tmp_path):
    def grid(root, majority=0.5, spread=0.001, seeds=(1, 2, 3)):
        for seed in seeds:
            j = (seed - 2) * spread
            _write(root, f"dense{seed}", "dense", 0.80 + j, seed=seed, majority=majority)
            _write(root, f"b{seed}", "omp", 0.785 - j, seed, sparsity=0.2, majority=majority,  # drop 1.5 points at 20%: the knee
                   method_cfg={"sparsity": 0.2, "scope": "global", "pattern": "unstructured", "score": "magnitude"})
    grid(tmp_path / "ok")
    assert essential.section(load_runs([tmp_path / "ok"]), tmp_path, plots=False).claims[0].verdict == DOES_NOT_HOLD
    grid(tmp_path / "floor", majority=0.78)  # dense only 2 points above the majority class
    claim = essential.section(load_runs([tmp_path / "floor"]), tmp_path, plots=False).claims[0]
    assert claim.verdict == UNDECIDABLE and "dense only 2.0 points above the majority class" in claim.ours
    grid(tmp_path / "noise", spread=0.02)  # ±2 points over seeds: a 1.5-point drop is within the noise
    claim = essential.section(load_runs([tmp_path / "noise"]), tmp_path, plots=False).claims[0]
    assert claim.verdict == UNDECIDABLE and "within seed noise" in claim.ours
    grid(tmp_path / "few", seeds=(1, 2))
    claim = essential.section(load_runs([tmp_path / "few"]), tmp_path, plots=False).claims[0]
    assert claim.verdict == UNDECIDABLE and "fewer than 3 seeds" in claim.ours


def test_random_init_runs_are_tabled_but_never_judged(tmp_path):
    """A random-init model scores at chance at every sparsity, so its flat "curve" would read as
    ES ≥ 60%: it must not make the claim hold (issue 19, item 14)."""
    rand = tmp_path / "random"
    _write(rand, "dense", "dense", 0.50, model="tiny_bert", random_init=True)
    for i, s in enumerate((0.3, 0.5, 0.7)):  # chance everywhere: drop 0 up to 70%
        _write(rand, f"omp{i}", "omp", 0.50, model="tiny_bert", random_init=True, sparsity=s,
               method_cfg={"sparsity": s, "score": "magnitude"})
    rounds = [{"round": 0, "sparsity": 0.2, "omp_mask_cosine": 1.0}, {"round": 1, "sparsity": 0.36, "omp_mask_cosine": 0.99}]
    _write(rand, "imp", "imp", 0.50, model="tiny_bert", random_init=True, sparsity=0.36, method_cfg={"rounds": 2}, rounds=rounds)
    out = tmp_path / "out"
    out.mkdir()
    sec = essential.section(load_runs([rand]), out)
    claim, cos_claim = sec.claims
    assert claim.verdict == NOT_MEASURABLE and "random-init" in claim.ours, claim
    assert cos_claim.verdict == NOT_MEASURABLE and "random-init" in cos_claim.ours, cos_claim
    assert "| tiny_bert (random init: no verdict) | synthetic_nli | magnitude |" in sec.markdown
    assert essential.CURVE_PLOT not in {f.name for f in sec.files}  # nothing pretrained to draw

    # beside a pretrained curve that falls off at 29.9%, the flat random-init curve changes nothing
    _known_curve(rand)
    sec = essential.section(load_runs([rand]), out, plots=False)
    assert sec.claims[0].verdict == DOES_NOT_HOLD and "tiny_bert" not in sec.claims[0].ours, sec.claims[0]


def test_magnitude_and_fisher_curves_side_by_side(tmp_path):
    root = tmp_path / "runs"
    _known_curve(root)
    for i, (measured, main) in enumerate([(0.1, 0.80), (0.3, 0.70)]):
        _omp(root, f"fisher{i}", measured, main, score="fisher")
    runs = load_runs([root])
    curves = essential.build_curves(runs)
    assert sorted(c.series for c in curves) == ["fisher", "magnitude"]
    fisher = next(c for c in curves if c.criterion == "fisher")
    assert essential.essential_and_knee(fisher.all_points()) == (pytest.approx(0.1), pytest.approx(0.3))
    fig = essential._curve_figure(curves)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(panels) == 2 and {ax.get_title().split("— ")[-1] for ax in panels} == {"magnitude", "fisher"}
    sec = essential.section(runs, tmp_path)
    assert "| bert_base | synthetic_nli | fisher |" in sec.markdown
    assert "magnitude" in sec.claims[0].ours and "fisher" not in sec.claims[0].ours  # the claim is the paper's criterion


def test_imp_omp_mask_cosine_figure(tmp_path):
    root = tmp_path / "runs"
    _known_curve(root)
    rounds = [{"round": 0, "sparsity": 0.2, "pruned_entries": 3277, "omp_mask_cosine": 1.0, "mask_file": "masks/round_0.safetensors"},
              {"round": 1, "sparsity": 0.36, "pruned_entries": 5898, "omp_mask_cosine": 0.985, "mask_file": "masks/round_1.safetensors"}]
    _write(root, "imp", "imp", 0.79, sparsity=0.36, method_cfg={"rounds": 2, "prune_per_round": 0.2}, rounds=rounds)
    out = tmp_path / "out"
    out.mkdir()
    sec = essential.section(load_runs([root]), out)
    fig = out / essential.COSINE_PLOT
    assert fig in sec.files and fig.read_bytes()[:8] == PNG
    assert "| bert_base | synthetic_nli | 36.0 | 98.50 | 64.00 | 1 |" in sec.markdown
    cos = sec.claims[1]
    # round 0 is the OMP mask itself (cosine 1 by construction) and is left out; ES is 29.87%, so
    # no other round lies inside the essential range and every round counts
    assert cos.verdict == HOLDS and "min 98.5% at 36.0%" in cos.ours and "no pruned round at or below ES 29.9%, so every round" in cos.ours
    rounds[1]["omp_mask_cosine"] = 0.90
    (root / "imp" / "masks" / "rounds.json").write_text(json.dumps(rounds))
    assert essential.section(load_runs([root]), out, plots=False).claims[1].verdict == DOES_NOT_HOLD
    (root / "imp" / "masks" / "rounds.json").write_text(json.dumps(rounds[:1]))  # one round: nothing to compare
    assert essential.section(load_runs([root]), out, plots=False).claims[1].verdict == NOT_MEASURABLE


# ----------------------------------------------------------------------------- PST
def _pst_grid(root: Path, high: dict[str, float], low: dict[str, float], pst_trainable: float = 0.016,
              chance: tuple = (), majority: float = 0.5) -> None:
    """`pst_trainable`: PST's fraction on the paper's basis (MvP's trainables); of the model's
    parameters it is 1.75× that (BERT-base: 1.45% vs 2.58%). Three seeds and a dense reference
    (90.0) so that the score claims can be decided (report.verdicts)."""
    for seed in (1, 2, 3):
        _write(root, f"dense_{seed}", "dense", 0.90 + (seed - 2) / 1000, seed=seed, trainable_fraction=1.0, majority=majority)
    for level, scores in ((0.9, high), (0.5, low)):
        for m, main in scores.items():
            for seed in (1, 2, 3):
                frac = pst_trainable * 1.75 if m == "pst" else (2.0 if m == "movement" else 1.0) * 0.99
                _write(root, f"{m}_{level}_{seed}", m, main + (seed - 2) / 1000, seed=seed, sparsity=level,
                       method_cfg={"sparsity": level, "scope": "layer", "schedule": "cubic"},
                       trainable_fraction=frac, mvp_basis=pst_trainable if m == "pst" else frac / 1.75,
                       method_report={"at_chance": True} if (m, level, seed) in chance else None, majority=majority)


def test_pst_table_plot_and_claims(tmp_path):
    root = tmp_path / "runs"
    _pst_grid(root, {"magnitude": 0.80, "movement": 0.82, "pst": 0.83}, {"magnitude": 0.86, "movement": 0.85, "pst": 0.84})
    out = tmp_path / "out"
    out.mkdir()
    sec = pst.section(load_runs([root]), out)
    assert "| bert_base | synthetic_nli | PST | 90 | 90.00 | 83.00 ± 0.10 (3) | 2.800 | 1.600 |" in sec.markdown
    assert (out / pst.PLOT) in sec.files and (out / pst.PLOT).read_bytes()[:8] == PNG
    order, trainable, low = sec.claims
    assert order.verdict == HOLDS and "PST − best +1.00 points" in order.ours
    # the claim is checked on the paper's basis (MvP's trainables), the model's basis beside it
    assert trainable.verdict == HOLDS and trainable.ours.startswith("1.60% of MvP's trainables (2.80% of the model's parameters)")
    assert "(at chance" not in sec.markdown and "[at chance" not in order.ours
    assert low.verdict == HOLDS and "MaP 86.00" in low.ours
    assert "bert_base/synthetic_nli: majority class 50.00; dense 90.00 ± 0.10 (n=3), +40.0 points above it" in sec.markdown


def test_pst_claims_undecidable_when_the_proxy_cannot_tell(tmp_path):
    # dense 90.0 only 2 points above the majority class (88.0)
    _pst_grid(tmp_path / "a", {"magnitude": 0.80, "movement": 0.82, "pst": 0.83}, {"magnitude": 0.86, "movement": 0.85},
              majority=0.88)
    order, _, low = pst.section(load_runs([tmp_path / "a"]), tmp_path, plots=False).claims
    assert order.verdict == low.verdict == UNDECIDABLE and "dense only 2.0 points above the majority class" in order.ours
    # PST and MvP 0.3 points apart with a 2-point spread over seeds: within seed noise
    root = tmp_path / "b"
    _pst_grid(root, {"magnitude": 0.70}, {})
    for m, main in (("movement", 0.820), ("pst", 0.823)):
        for seed, jitter in ((1, -0.02), (2, 0.0), (3, 0.02)):
            _write(root, f"{m}_noisy_{seed}", m, main + jitter, seed=seed, sparsity=0.9, method_cfg={"sparsity": 0.9})
    order = pst.section(load_runs([root]), tmp_path, plots=False).claims[0]
    assert order.verdict == UNDECIDABLE and "within seed noise" in order.ours


def test_pst_claims_flip_when_the_scores_flip(tmp_path):
    root = tmp_path / "runs"
    _pst_grid(root, {"magnitude": 0.83, "movement": 0.82, "pst": 0.80}, {"magnitude": 0.84, "movement": 0.85, "pst": 0.86},
              pst_trainable=0.10)
    order, trainable, low = pst.section(load_runs([root]), tmp_path, plots=False).claims
    assert order.verdict == DOES_NOT_HOLD and "PST − best -3.00 points" in order.ours
    assert trainable.verdict == DOES_NOT_HOLD and "10.00% of MvP's trainables" in trainable.ours
    assert low.verdict == DOES_NOT_HOLD
    # MvP above MaP but PST below MvP still breaks the order
    root2 = tmp_path / "runs2"
    _pst_grid(root2, {"magnitude": 0.80, "movement": 0.84, "pst": 0.83}, {"magnitude": 0.86})
    order, _, low = pst.section(load_runs([root2]), tmp_path, plots=False).claims
    assert order.verdict == DOES_NOT_HOLD
    assert low.verdict == NOT_MEASURABLE  # MaP alone at 50%: nothing to compare with


def test_pst_claims_need_all_three_at_90_measured(tmp_path):
    root = tmp_path / "runs"
    _pst_grid(root, {"magnitude": 0.80, "pst": 0.83}, {})
    # a movement run configured for 90% that measured 80% is not "at 90%"
    _write(root, "mvp", "movement", 0.82, sparsity=0.80, method_cfg={"sparsity": 0.9})
    order, trainable, low = pst.section(load_runs([root]), tmp_path, plots=False).claims
    assert order.verdict == NOT_MEASURABLE and order.ours.startswith("n/a")
    assert trainable.verdict == HOLDS
    assert low.verdict == NOT_MEASURABLE


# ----------------------------------------------------------------------------- no relevant runs
def test_sections_are_none_without_relevant_runs(tmp_path):
    root = tmp_path / "runs"
    _write(root, "dense", "dense", 0.80)
    _write(root, "fish", "fish", 0.79, method_cfg={"density": 0.005})
    _write(root, "lora", "lora", 0.78)
    runs = load_runs([root])
    assert essential.section(runs, tmp_path) is None
    assert pst.section(runs, tmp_path) is None
    assert builder("essential")([], tmp_path) is None and builder("pst")([], tmp_path) is None
    assert list(tmp_path.glob("*.png")) == []
    # IMP runs alone are no OMP curve; PST runs alone are no essential-sparsity section
    _write(root, "imp", "imp", 0.79, sparsity=0.36, rounds=[{"round": 0, "sparsity": 0.2, "omp_mask_cosine": 1.0}])
    _write(root, "pst", "pst", 0.80, sparsity=0.9, method_cfg={"sparsity": 0.9}, trainable_fraction=0.016)
    runs = load_runs([root])
    assert essential.section(runs, tmp_path) is None
    assert pst.section(runs, tmp_path) is not None


def test_pst_trainable_claim_uses_the_papers_basis_and_a_chance_level_mvp_is_named(tmp_path):
    root = tmp_path / "runs"
    # 1.45% of MvP's trainables is 2.54% of the model's: the claim holds on the paper's basis only
    _pst_grid(root, {"magnitude": 0.80, "movement": 0.50, "pst": 0.83}, {"magnitude": 0.86, "movement": 0.50},
              pst_trainable=0.0145, chance={("movement", 0.9, 1), ("movement", 0.5, 2)})
    sec = pst.section(load_runs([root]), tmp_path, plots=False)
    order, trainable, low = sec.claims
    assert trainable.verdict == HOLDS and trainable.ours.startswith("1.45% of MvP's trainables (2.54% of the model's")
    assert "MvP 50.00 [at chance in 1/3 run(s)" in order.ours
    assert "MvP 50.00 [at chance in 1/3 run(s)" in low.ours
    assert sec.markdown.count("(at chance: 1/3)") == 2
    # without the paper-basis fraction (a run of an older version) the claim is not measurable
    root2 = tmp_path / "runs2"
    _write(root2, "pst", "pst", 0.80, sparsity=0.9, method_cfg={"sparsity": 0.9}, trainable_fraction=0.0254)
    assert pst.section(load_runs([root2]), tmp_path, plots=False).claims[1].verdict == NOT_MEASURABLE


def test_imp_cosine_shows_the_random_mask_floor_and_leaves_out_dense_rounds(tmp_path):
    root = tmp_path / "runs"
    _known_curve(root)
    # the lottery-ticket default: round 0 is dense (sparsity 0, cosine 1 by construction)
    rounds = [{"round": 0, "sparsity": 0.0, "omp_mask_cosine": 1.0, "random_mask_cosine": 1.0},
              {"round": 1, "sparsity": 0.2, "omp_mask_cosine": 0.97, "random_mask_cosine": 0.801},
              {"round": 2, "sparsity": 0.36, "omp_mask_cosine": 0.96}]  # no measured floor: its expectation 1 − s
    _write(root, "imp", "imp", 0.79, sparsity=0.36, method_cfg={"rounds": 3, "prune_per_round": 0.2, "dense_first": True}, rounds=rounds)
    sec = essential.section(load_runs([root]), tmp_path, plots=False)
    assert "random mask cosine (%, floor)" in sec.markdown
    assert "| bert_base | synthetic_nli | 20.0 | 97.00 | 80.10 | 1 |" in sec.markdown
    assert "| bert_base | synthetic_nli | 36.0 | 96.00 | 64.00 | 1 |" in sec.markdown
    cos = sec.claims[1]
    # ES is 29.87%: the round at 20% is the one inside the essential range; its floor is the measured one
    assert cos.verdict == HOLDS and "min 97.0% at 20.0%" in cos.ours and "a random mask: 80.1%" in cos.ours
    # only the dense round: nothing to compare
    (root / "imp" / "masks" / "rounds.json").write_text(json.dumps(rounds[:1]))
    assert essential.section(load_runs([root]), tmp_path, plots=False).claims[1].verdict == NOT_MEASURABLE


# --- the NLG and SQuAD tasks' main metrics in the pruning sections (moved from tests of those tasks) ---


def test_essential_report_reads_squad_f1_curves(tmp_path):
    """The Essential Sparsity section takes SQuAD's main metric (F1) like any task's."""
    pytest.importorskip("matplotlib")
    from sparse_ft.report.collect import load_runs
    from sparse_ft.report.papers import essential

    root = tmp_path / "runs"
    _write(root, "dense", "dense", 0.88, model="bert_base", task="squad", trainable_fraction=1.0)
    for i, (sp, f1) in enumerate([(0.2, 0.878), (0.4, 0.872), (0.6, 0.80)]):
        _write(root, f"omp{i}", "omp", f1, model="bert_base", task="squad", sparsity=sp,
               method_cfg={"sparsity": sp, "scope": "global", "pattern": "unstructured", "score": "magnitude"})
    (curve,) = essential.build_curves(load_runs([root]))
    assert (curve.model, curve.task) == ("bert_base", "squad") and curve.dense_score == pytest.approx(0.88)
    assert essential.essential_and_knee(curve.all_points()) == (pytest.approx(0.4), pytest.approx(0.6))


def test_pst_report_reads_bleu_on_the_nlg_tasks(tmp_path):
    """The PST section takes the NLG tasks' main metric (BLEU) like any task's."""
    pytest.importorskip("matplotlib")
    from sparse_ft.report.collect import load_runs
    from sparse_ft.report.papers import UNDECIDABLE, pst

    root = tmp_path / "runs"
    for m, bleu in (("magnitude", 0.60), ("movement", 0.62), ("pst", 0.66)):
        _write(root, m, m, bleu, model="gpt2_medium", task="webnlg", sparsity=0.9,
               method_cfg={"sparsity": 0.9, "scope": "layer", "schedule": "cubic"}, trainable_fraction=0.012 if m == "pst" else 0.99)
    out = tmp_path / "out"
    out.mkdir()
    sec = pst.section(load_runs([root]), out, plots=False)
    assert "| gpt2_medium | webnlg | PST | 90 | 90.00 | 66.00" in sec.markdown
    order = sec.claims[0]
    assert "PST 66.00, MvP 62.00, MaP 60.00 (PST − best +4.00 points) on gpt2_medium/webnlg" in order.ours
    # one seed each: the verdict rules (report/verdicts.py) leave it undecidable and say why
    assert order.verdict == UNDECIDABLE and "fewer than 3 seeds" in order.ours
