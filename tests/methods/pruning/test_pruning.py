"""Pruning methods (issue 10): omp, magnitude, movement, pst, imp.

The contract tests (tests/contract/test_method_contract.py) already run every one of them (bad values named, a tiny
run, accounting, resume bit for bit). Here: the cubic schedule, exact zeros against the saved
mask, N:M on every row, the target sparsity reached exactly at the end, what PST trains and
counts, IMP's nested masks and rewinding, the Fisher score, and bad input named by its key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from conftest import compose, run_inprocess
from sparse_ft.core.errors import ConfigError
from sparse_ft.methods.pruning.masks import (
    load_compact, load_masks, n_pruned, nm_keep, pack, parse_pattern, select, unpack,
)
from sparse_ft.methods.pruning.schedule import cubic_sparsity, ramp_bounds
from sparse_ft.methods.registry import registered

TINY = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16",
        "trainer.batch_size=8", "trainer.lr=1e-3"]
PRUNING = ("omp", "magnitude", "movement", "pst", "imp")


def at_step(step: int):
    """What a method's per-step event hooks read from the trainer: `trainer.state.step`."""
    from types import SimpleNamespace

    return SimpleNamespace(state=SimpleNamespace(step=step))


def bits_zero(t: torch.Tensor) -> torch.Tensor:
    """Element-wise: is the entry +0.0 bit for bit (not −0.0)?"""
    return t.contiguous().view(torch.int32) == 0


def base_state(run: Path) -> dict[str, torch.Tensor]:
    """The weights the run started from (the model rebuilt as the run built it)."""
    from sparse_ft.jobs.entry import seed_everything
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = OmegaConf.load(run / "config.yaml")
    seed_everything(cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    return {k: v.clone() for k, v in build_model(cfg.model, task, max_length=int(cfg.task.max_length)).module.state_dict().items()}


class Setup:
    """A tiny BERT, its encoded training split and a MethodContext: methods driven by hand."""

    def __init__(self, run_dir: Path, total_steps: int = 10):
        from sparse_ft.jobs.entry import seed_everything
        from sparse_ft.methods.base import MethodContext
        from sparse_ft.models import build_model
        from sparse_ft.tasks import load_task

        self.cfg = compose(TINY)
        seed_everything(0)
        task = load_task(self.cfg.task, 0)
        self.bundle = build_model(self.cfg.model, task, max_length=int(self.cfg.task.max_length))
        self.features = self.bundle.encode(task, task.train_split)
        b = self.bundle
        self.ctx = MethodContext(run_dir=run_dir, device=torch.device("cpu"), seed=0, train_features=self.features, collate=b.collate,
                                 loss=b.loss, per_example_loss=b.per_example_loss, logits=b.logits, total_steps=total_steps,
                                 steps_per_epoch=total_steps, model_cfg=self.cfg.model, bundle=b)

    def method(self, name: str, **opts):
        base = OmegaConf.to_container(compose([f"method={name}"]).method)
        return registered()[name](OmegaConf.create({**base, **opts}))

    def batch(self, n: int = 8) -> dict:
        return self.bundle.collate([self.features[i] for i in range(n)])


# --- the cubic schedule ------------------------------------------------------------------------


@pytest.mark.parametrize("total,warm,cool", [(100, 0.1, 0.3), (10, 0.1, 0.3), (4, 0.1, 0.3), (37, 0.0, 0.0), (50, 0.2, 0.5)])
def test_cubic_schedule_is_zhu_and_gupta_as_torch_ao_computes_it(total, warm, cool):
    from torch.ao.pruning import CubicSL

    final = 0.9
    t0, t1 = ramp_bounds(total, warm, cool)
    assert t0 == round(warm * total) and t1 == total - round(cool * total)
    values = [cubic_sparsity(t, total, final, warm, cool) for t in range(total + 1)]
    for t, v in enumerate(values):
        ref = CubicSL.sparsity_compute_fn(0.0, final, t, t0, 1, max(t1 - t0, 1), initially_zero=True)
        assert v == pytest.approx(ref, abs=1e-12), t
        if t0 < t < t1:  # the formula itself
            assert v == pytest.approx(final * (1 - (1 - (t - t0) / (t1 - t0)) ** 3))
    assert all(v == 0.0 for v in values[: t0 + 1])  # the dense warm-up
    assert all(v == final for v in values[t1:])  # exactly the final sparsity from t1 on (cool-down)
    assert values == sorted(values)
    # PST's defaults on 100 steps: dense through step 10, final from step 70
    assert ramp_bounds(100, 0.1, 0.3) == (10, 70)


# --- choosing masks ----------------------------------------------------------------------------


def test_masks_prune_exact_counts_break_ties_by_position_and_are_nested():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(7, 13, generator=g), "b": torch.randn(5, 8, generator=g), "c": torch.zeros(3, 4)}
    total = sum(s.numel() for s in scores.values())
    for s in (0.0, 0.25, 0.5, 0.9):
        keep = select(scores, s, "global")
        assert sum(int((~k).sum()) for k in keep.values()) == n_pruned(total, s)
        kept = torch.cat([scores[n][keep[n]] for n in scores])
        pruned = torch.cat([scores[n][~keep[n]] for n in scores])
        if pruned.numel() and kept.numel():
            assert pruned.max() <= kept.min()
        layer = select(scores, s, "layer")
        assert all(int((~layer[n]).sum()) == n_pruned(scores[n].numel(), s) for n in scores)
    # nested: a higher sparsity prunes a superset
    low, high = select(scores, 0.3, "global"), select(scores, 0.6, "global")
    assert all(bool((high[n] <= low[n]).all()) for n in scores)
    # ties (all-zero scores) go by position: the first entries are pruned
    tie = select({"z": torch.zeros(10)}, 0.3, "layer")["z"]
    assert tie.tolist() == [False] * 3 + [True] * 7


def test_nm_keeps_n_of_every_m_consecutive_inputs_linear_and_conv():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 16, generator=g)
    for n, m in ((2, 4), (4, 8), (1, 4)):
        keep = nm_keep(w, n, m)
        groups = keep.view(6, -1, m)
        assert (groups.sum(-1) == n).all()
        # the kept ones are the largest of their group
        vals = w.view(6, -1, m)
        assert (vals.masked_fill(~groups, -math.inf).amax(-1) >= vals.masked_fill(groups, -math.inf).amax(-1)).all()
    conv = torch.randn(3, 8, 2, 2, generator=g)  # (out, in, kh, kw): groups run along the input channels
    keep = nm_keep(conv, 2, 4)
    assert (keep.permute(0, 2, 3, 1).reshape(-1, 2, 4).sum(-1) == 2).all()
    assert parse_pattern("unstructured") is None and parse_pattern("2:4") == (2, 4)
    for bad in ("5:4", "0:4", "abc", "2-4"):
        with pytest.raises(ConfigError, match=r"method\.pattern"):
            parse_pattern(bad)


def test_packed_bits_round_trip_any_size():
    g = torch.Generator().manual_seed(2)
    for shape in ((1,), (7,), (3, 5), (2, 3, 3, 3)):
        m = torch.rand(shape, generator=g) > 0.5
        assert torch.equal(unpack(pack(m), shape), m)


# --- OMP -----------------------------------------------------------------------------------------


def test_omp_final_zeros_are_bit_exact_against_the_saved_mask(tmp_path):
    s = run_inprocess(tmp_path, [*TINY, "method=omp", "method.sparsity=0.6", "trainer.max_steps=6"])
    assert s["status"] == "completed", s.get("error")
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    keep = load_masks(tmp_path / "prune_mask.safetensors")
    base = base_state(tmp_path)
    # the default targets: the 12 Linear weights of tiny BERT's two blocks, nothing else
    assert len(keep) == 12 and all(".encoder.layer." in n and n.endswith(".weight") for n in keep)
    total = sum(k.numel() for k in keep.values())
    assert sum(int((~k).sum()) for k in keep.values()) == n_pruned(total, 0.6)
    # the mask is the one-shot global magnitude mask of the pretrained weights
    expected = select({n: base[n].abs() for n in keep}, 0.6, "global")
    assert all(torch.equal(keep[n], expected[n]) for n in keep)
    for n, k in keep.items():
        assert bits_zero(final[n][~k]).all(), f"{n}: a pruned entry is not +0.0"
        assert (final[n][k] != base[n][k]).any(), f"{n}: the kept weights did not train"
    block = s["sparsity"]  # summary.json → sparsity, measured on the final weights
    zeros = sum(int((final[n] == 0).sum()) for n in keep)
    assert block["overall"] == zeros / total and block["target"] == 0.6
    assert set(block["per_layer"]) == set(keep)
    assert all(block["per_layer"][n] == int((final[n] == 0).sum()) / final[n].numel() for n in keep)
    assert block == s["method_report"]["sparsity"]
    assert s["params"]["trainable"] == s["params"]["total"] - n_pruned(total, 0.6)  # pruned entries never train
    assert s["method_report"]["pruned_entries"] == n_pruned(total, 0.6)
    # the compact form gives the final checkpoint back bit for bit, and is reported as storage
    compact = load_compact(tmp_path / "sparse_weights.safetensors")
    assert set(compact) == set(final)
    assert all(torch.equal(compact[k].view(torch.uint8), final[k].view(torch.uint8)) for k in final if final[k].is_floating_point())
    arts = s["storage"]["artifacts"]
    assert arts["sparse_weights.safetensors"]["bytes"] == (tmp_path / "sparse_weights.safetensors").stat().st_size
    assert arts["prune_mask.safetensors"]["bytes"] == (tmp_path / "prune_mask.safetensors").stat().st_size


def test_omp_n_m_pattern_holds_on_every_row_of_the_final_weights(tmp_path):
    s = run_inprocess(tmp_path, [*TINY, "method=omp", "method.pattern=2:4", "trainer.max_steps=3"])
    assert s["status"] == "completed", s.get("error")
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    keep = load_masks(tmp_path / "prune_mask.safetensors")
    for n, k in keep.items():
        assert (k.view(k.shape[0], -1, 4).sum(-1) == 2).all(), n
        assert ((final[n] == 0).view(k.shape[0], -1, 4).sum(-1) >= 2).all(), n
        assert bits_zero(final[n][~k]).all()
    assert s["method_report"]["sparsity"]["overall"] == pytest.approx(0.5)
    assert s["method_report"]["sparsity"]["pattern"] == "2:4"


def test_omp_fisher_score_prunes_the_lowest_fisher(tmp_path):
    from sparse_ft.methods.masked.fisher import fisher_diagonal

    from sparse_ft.methods.pruning.targets import prunable

    setup = Setup(tmp_path)
    module = setup.bundle.module
    # the reference: the per-example loop over the 16 examples the method draws with the seed
    order = torch.randperm(len(setup.features), generator=torch.Generator().manual_seed(0))[:16].tolist()
    ref = fisher_diagonal(module, [setup.features[i] for i in order], setup.bundle.collate, setup.bundle.per_example_loss,
                          impl="loop", names=list(prunable(module))).scores
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    method = setup.method("omp", score="fisher", num_samples=16, sparsity=0.5)
    captured = {}
    real = method.scores

    def spy(m, ctx):
        captured.update(real(m, ctx))
        return captured

    method.scores = spy
    method.prepare(module, setup.ctx)
    names = list(method.params)
    kept = torch.cat([captured[n][method.keep[n]] for n in names])
    pruned = torch.cat([captured[n][~method.keep[n]] for n in names])
    assert pruned.max() <= kept.min()
    assert all(bits_zero(method.params[n].detach()[~method.keep[n]]).all() for n in names)
    magnitude = select({n: initial[n].abs() for n in names}, 0.5, "global")
    assert any(not torch.equal(magnitude[n], method.keep[n]) for n in names)  # another criterion, another mask
    assert method.stats["num_samples"] == 16 and method.stats["score"] == "fisher"
    for n in names:  # the scores are the diagonal Fisher of the pretrained model
        assert torch.allclose(captured[n], ref[n], rtol=1e-4, atol=1e-12), n


# --- the schedule in real runs -----------------------------------------------------------------

SCHEDULED = ("magnitude", "movement", "pst")


@pytest.fixture(scope="module")
def scheduled_runs(tmp_path_factory):
    runs = {}

    def get(name):
        if name not in runs:
            d = tmp_path_factory.mktemp(name)
            s = run_inprocess(d, [*TINY, f"method={name}", "method.sparsity=0.8", "trainer.max_steps=10", "trainer.checkpoint_every=5"])
            runs[name] = (d, s)
        return runs[name]

    return get


def _zeros(name: str, tensors: dict, key: str) -> int:
    if name == "pst":  # the step-5 checkpoint holds the wrapped layer: W0 and its mask
        return int((~tensors[key.rsplit(".", 1)[0] + ".pst_mask"]).sum())
    return int((tensors[key] == 0).sum())


@pytest.mark.parametrize("name", SCHEDULED)
def test_scheduled_methods_follow_the_cubic_schedule_and_end_exactly_at_the_target(name, scheduled_runs):
    run, s = scheduled_runs(name)
    assert s["status"] == "completed", s.get("error")
    final = load_file(str(run / "checkpoints/final/model.safetensors"))
    keep = load_masks(run / "prune_mask.safetensors")
    assert len(keep) == 12
    for n, k in keep.items():  # scope=layer: every matrix exactly round(0.8·numel) zeros
        assert int((~k).sum()) == n_pruned(k.numel(), 0.8), n
        assert int((final[n] == 0).sum()) == n_pruned(k.numel(), 0.8), n
        assert bits_zero(final[n][~k]).all(), n
    block = s["sparsity"]
    assert block["overall"] == pytest.approx(0.8, abs=1e-3) and block["target"] == 0.8
    assert block["schedule"]["dense_until_step"] == 1 and block["schedule"]["final_from_step"] == 7
    # half-way (the checkpoint at step 5) the layers sit at the cubic schedule's value for step 5
    mid = load_file(str(run / "checkpoints/last/model.safetensors"))
    assert json.loads((run / "checkpoints/last/manifest.json").read_text())["step"] == 5
    level = cubic_sparsity(5, 10, 0.8, 0.1, 0.3)
    assert 0 < level < 0.8
    for n, k in keep.items():
        assert _zeros(name, mid, n) == n_pruned(k.numel(), level), n
    assert s["best"]["step"] >= 0  # evaluations recorded; the final weights are the last ones (select_best off)


def test_pst_trains_only_its_small_matrices_and_the_head(scheduled_runs):
    run, s = scheduled_runs("pst")
    base = base_state(run)
    final = load_file(str(run / "checkpoints/final/model.safetensors"))
    assert set(final) == set(base)
    prunable = set(load_masks(run / "prune_mask.safetensors"))
    head = {"classifier.weight", "classifier.bias"}
    # (n + k)(r1 + r2 + 1) per matrix: tiny BERT has hidden 32, intermediate 64, two blocks
    shapes = [(32, 32)] * 4 + [(64, 32), (32, 64)]
    small = 2 * sum((n + k) * (8 + 8 + 1) for n, k in shapes)
    head_count = sum(base[n].numel() for n in head)
    p = s["params"]
    assert p["trainable"] == small + head_count
    assert p["added"] == small
    assert s["method_report"]["small_matrix_params"] == small
    for name, t in base.items():  # embeddings, LayerNorm, biases, pooler: untouched
        if name not in prunable and name not in head and t.is_floating_point():
            assert torch.equal(final[name], t), name
    # the wrapped layers keep W0 frozen in the run's own checkpoint
    last = load_file(str(run / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(last[n], base[n]) for n in prunable)
    assert any(not torch.equal(final[n], base[n]) for n in head)


def test_movement_counts_its_scores_as_added_as_well_as_trainable(scheduled_runs):
    """MvP trains one score per prunable weight: parameters the pretrained model lacks, so
    `params.added` counts them, as it counts PST's small matrices (issue 19, item 14)."""
    run, s = scheduled_runs("movement")
    assert s["status"] == "completed", s.get("error")
    scores = sum(m.numel() for m in load_masks(run / "prune_mask.safetensors").values())  # one per prunable weight
    p = s["params"]
    assert scores > 0
    assert p["added"] == scores
    assert p["trainable"] == p["total"] + scores  # every weight trains, and so do the scores


def test_pst_gradients_are_the_full_score_straight_through_ones():
    """The authors' SparseBinarizer: ∂L/∂S = ∂L/∂(W⊙M) ⊙ W reaches the whole score S = |W| +
    λ(α1·AB + α2·(R ⊕ C)) — A, B, R and C (scaled by λα1, λα2) and, through |W0 + UV|, U and V."""
    from sparse_ft.methods.pruning.pst import PSTLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 5)
    layer = PSTLinear(lin, r1=2, r2=3, alpha1=0.7, alpha2=1.3, lam=0.5)
    with torch.no_grad():
        for p in (layer.pst_V, layer.pst_B, layer.pst_R, layer.pst_C):
            p.normal_()
        layer.pst_mask.copy_(torch.rand(5, 6) > 0.4)
    x = torch.randn(4, 6)
    target = torch.randn(4, 5)
    ((layer(x) - target) ** 2).sum().backward()
    w = (lin.weight + layer.pst_U @ layer.pst_V).detach()
    m = layer.pst_mask.float()
    weff = (w * m).requires_grad_(True)  # reference: G = ∂L/∂(W ⊙ M)
    ((torch.nn.functional.linear(x, weff, lin.bias) - target) ** 2).sum().backward()
    G = weff.grad
    gs = G * w  # ∂L/∂S
    assert torch.allclose(layer.pst_R.grad, 0.5 * 1.3 * gs.sum(1), atol=1e-5)
    assert torch.allclose(layer.pst_C.grad, 0.5 * 1.3 * gs.sum(0), atol=1e-5)
    assert torch.allclose(layer.pst_A.grad, 0.5 * 0.7 * gs @ layer.pst_B.detach().T, atol=1e-5)
    assert torch.allclose(layer.pst_B.grad, 0.5 * 0.7 * layer.pst_A.detach().T @ gs, atol=1e-5)
    gw = G * m + gs * torch.sign(w)  # through W ⊙ M and through |W| in the score
    assert torch.allclose(layer.pst_U.grad, gw @ layer.pst_V.detach().T, atol=1e-5)
    assert torch.allclose(layer.pst_V.grad, layer.pst_U.detach().T @ gw, atol=1e-5)
    with torch.no_grad():  # evaluation computes the same output without the straight-through terms
        assert torch.allclose(layer(x), torch.nn.functional.linear(x, w * m, lin.bias), atol=1e-6)
    score = layer.score()
    expected = w.abs() + 0.5 * (0.7 * layer.pst_A.detach() @ layer.pst_B.detach() + 1.3 * (layer.pst_R.detach()[:, None] + layer.pst_C.detach()[None, :]))
    assert torch.allclose(score, expected)


def test_pst_initialisation_is_the_authors():
    from sparse_ft.methods.pruning.pst import PSTLinear

    torch.manual_seed(0)
    layer = PSTLinear(torch.nn.Linear(256, 128), r1=8, r2=8, alpha1=1, alpha2=1, lam=1)
    for name in ("pst_A", "pst_U"):  # torch.randn: N(0, 1), not a small std
        t = getattr(layer, name).detach()
        assert abs(float(t.std()) - 1.0) < 0.1 and abs(float(t.mean())) < 0.1, name
    for name in ("pst_B", "pst_V", "pst_R", "pst_C"):
        assert torch.count_nonzero(getattr(layer, name)) == 0, name
    assert torch.equal(layer.merged(), layer.weight)  # W = W0 at the start (V = 0)


def test_pst_r_and_c_train_in_the_optimizer_or_accumulate_as_eq4(tmp_path):
    setup = Setup(tmp_path)
    module = setup.bundle.module
    method = setup.method("pst", sparsity=0.5)
    method.wrap(setup.bundle, setup.ctx)
    method.prepare(module, setup.ctx)
    in_opt = {id(p) for g in method.param_groups(0.0) for p in g["params"]}
    layer = next(iter(method.layers.values()))
    assert id(layer.pst_R) in in_opt and id(layer.pst_C) in in_opt  # the authors' code: R, C are optimizer parameters
    module.train()
    setup.bundle.loss(setup.batch()).backward()
    before = layer.pst_R.detach().clone()
    method.after_backward(at_step(0))  # nothing outside the optimizer
    assert torch.equal(layer.pst_R.detach(), before) and layer.pst_R.grad is not None

    setup2 = Setup(tmp_path / "eq4")
    module2 = setup2.bundle.module
    lit = setup2.method("pst", sparsity=0.5, rc_update="accumulate")
    lit.wrap(setup2.bundle, setup2.ctx)
    lit.prepare(module2, setup2.ctx)
    in_opt = {id(p) for g in lit.param_groups(0.0) for p in g["params"]}
    layer2 = next(iter(lit.layers.values()))
    assert id(layer2.pst_R) not in in_opt and id(layer2.pst_C) not in in_opt
    module2.train()
    setup2.bundle.loss(setup2.batch()).backward()
    grad = layer2.pst_R.grad.clone()
    lit.after_backward(at_step(0))  # eq. 4: R ← R − rowsum(∂L/∂W ⊙ W) (unit weight in the straight-through product)
    assert torch.equal(layer2.pst_R.detach(), -grad) and layer2.pst_R.grad is None


def test_pst_trains_a_pooler_with_no_trained_values_with_the_head(tmp_path):
    """MiniLM's never-trained pooler: the rule every body-freezing method shares (petl.side.new_params)."""
    from sparse_ft.methods.petl.side import new_params

    from dataclasses import replace

    setup = Setup(tmp_path)
    module = setup.bundle.module
    pooler = sorted(n for n, _ in module.named_parameters() if ".pooler." in n)
    assert pooler
    bundle = replace(setup.bundle, newly_initialized=tuple(pooler))  # as models.text lists a checkpoint's untrained pooler
    method = setup.method("pst", sparsity=0.5)
    method.wrap(bundle, setup.ctx)
    method.prepare(module, setup.ctx)
    trains = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(pooler) <= trains
    assert {n for n in trains if ".pst_" not in n} == set(new_params(bundle))
    assert set(pooler) <= set(method.report()["trained_with_head"])


# --- selection at the final sparsity, trainable % on the paper's basis -------------------------------


@pytest.mark.parametrize("name", ["magnitude", "movement"])
def test_gradual_pruning_selects_the_best_evaluation_at_the_final_sparsity(name, tmp_path):
    s = run_inprocess(tmp_path, [*TINY, f"method={name}", "method.sparsity=0.8", "trainer.max_steps=10", "trainer.eval_every=1",
                                 *(["method.score_lr=1e-3"] if name == "movement" else [])])
    assert s["status"] == "completed", s.get("error")
    t1 = s["sparsity"]["schedule"]["final_from_step"]
    evals = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["main"] for r in evals if r.get("type") == "eval" and r.get("split") == "validation"}
    assert set(evals) == set(range(1, 11))
    eligible = {k: v for k, v in evals.items() if k >= t1}
    best = max(eligible.values())
    assert s["best"]["step"] >= t1 and s["best"]["main"] == best
    assert s["best"]["step"] == min(k for k, v in eligible.items() if v == best)  # the first of equals, as the trainer keeps
    assert s["metrics"]["validation"]["main"] == best  # select_best restored the best cool-down weights
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    keep = load_masks(tmp_path / "prune_mask.safetensors")
    for n, k in keep.items():  # the saved mask is the one the restored weights were pruned with
        assert bits_zero(final[n][~k]).all() and int((final[n] == 0).sum()) == n_pruned(k.numel(), 0.8), n


def test_movement_best_state_survives_a_resume_in_the_cool_down(tmp_path):
    """select_best keeps MvP's masks and scores with the best weights; a run resumed inside the
    cool-down (after a best was kept) ends bit-identical to the uninterrupted one."""
    args = [*TINY, "method=movement", "method.sparsity=0.8", "method.score_lr=1e-3", "trainer.max_steps=10",
            "trainer.eval_every=1", "trainer.checkpoint_every=8"]
    full = run_inprocess(tmp_path / "full", args)
    assert full["status"] == "completed", full.get("error")
    resumed = run_inprocess(tmp_path / "resumed", [*args, f"trainer.resume={tmp_path / 'full'}"])
    assert resumed["resumed_from"]["step"] == 8
    a = load_file(str(tmp_path / "full/checkpoints/final/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["best"]["step"] == full["best"]["step"] and resumed["metrics"] == full["metrics"]
    ka, kb = load_masks(tmp_path / "full/prune_mask.safetensors"), load_masks(tmp_path / "resumed/prune_mask.safetensors")
    assert all(torch.equal(ka[n], kb[n]) for n in ka)


def test_trainable_fraction_on_the_papers_basis(tmp_path):
    """MvP's trainables — all the model's parameters plus one score per prunable weight — are the
    PST paper's basis; recorded beside the fraction of the model's parameters."""
    s = run_inprocess(tmp_path, [*TINY, "method=pst", "method.sparsity=0.5", "trainer.max_steps=2"])
    p = s["params"]
    prunable = s["sparsity"]["prunable"]
    assert p["mvp_basis"] == p["total"] + prunable
    assert p["trainable_fraction_mvp_basis"] == pytest.approx(p["trainable"] / (p["total"] + prunable))
    assert p["trainable_fraction_mvp_basis"] < p["trainable_fraction"]


def test_movement_flags_a_chance_level_result(tmp_path, caplog):
    from sparse_ft.methods.base import Stage

    setup = Setup(tmp_path)
    method = setup.method("movement", sparsity=0.5)
    method.prepare(setup.bundle.module, setup.ctx)
    labels = [int(f["labels"]) for f in setup.features]
    majority = max(labels.count(v) for v in set(labels)) / len(labels)
    with caplog.at_level("WARNING"):
        method.end_stage(0, Stage(), {"best": {"metrics": {"validation": {"accuracy": majority, "main": majority}}}})
    assert method.report()["at_chance"] is True and method.report()["majority_rate"] == pytest.approx(majority)
    assert any("at chance" in r.message and "score_lr" in r.message for r in caplog.records)
    method.end_stage(0, Stage(), {"best": {"metrics": {"validation": {"accuracy": majority + 0.2, "main": majority + 0.2}}}})
    assert method.report()["at_chance"] is False


# --- movement ------------------------------------------------------------------------------------


def test_movement_scores_learn_straight_through_and_pruned_weights_return_with_their_value(tmp_path):
    setup = Setup(tmp_path, total_steps=10)
    module = setup.bundle.module
    method = setup.method("movement", sparsity=0.5)
    method.prepare(module, setup.ctx)
    name = next(iter(method.params))
    p, s = method.params[name], method.score_params[name]
    assert torch.equal(s.detach(), p.detach().abs())  # scores start at |W|
    method.reprune(0.5)
    keep = method.keep[name].clone()
    assert bits_zero(p.detach()[~keep]).all()
    module.train()
    setup.bundle.loss(setup.batch()).backward()
    g = p.grad.clone()
    method.after_backward(at_step(0))
    dense = torch.where(keep, p.detach(), method.hidden[name])
    assert torch.equal(s.grad, g * dense)  # ∂L/∂S = ∂L/∂(W⊙M) ⊙ W, pruned entries included
    assert (p.grad[~keep] == 0).all()
    # force one pruned weight back in: it returns with the value it had when pruned
    with torch.no_grad():
        idx = (~keep).view(-1).nonzero()[0]
        s.view(-1)[idx] = 1e6
    old_value = method.hidden[name].view(-1)[idx].clone()
    assert old_value.abs() > 0
    method.reprune(0.5)
    assert method.keep[name].view(-1)[idx]
    assert torch.equal(p.detach().view(-1)[idx], old_value)
    assert int((~method.keep[name]).sum()) == n_pruned(p.numel(), 0.5)


# --- IMP -----------------------------------------------------------------------------------------


def test_imp_two_rounds_nested_masks_rewind_and_round_files(tmp_path):
    s = run_inprocess(tmp_path, [*TINY, "method=imp", "method.rounds=2", "method.prune_per_round=0.3", "method.dense_first=false",
                                 "trainer.max_steps=4"])
    assert s["status"] == "completed", s.get("error")
    assert [st["name"] for st in s["stages"]] == ["round_0", "round_1"]
    m0 = load_masks(tmp_path / "masks/round_0.safetensors")
    m1 = load_masks(tmp_path / "masks/round_1.safetensors")
    total = sum(k.numel() for k in m0.values())
    assert sum(int((~k).sum()) for k in m0.values()) == n_pruned(total, 0.3)
    assert sum(int((~k).sum()) for k in m1.values()) == n_pruned(total, 1 - 0.7 ** 2)
    assert all(bool((m1[n] <= m0[n]).all()) for n in m0)  # nested: round 1 prunes a superset
    base = base_state(tmp_path)
    omp = select({n: base[n].abs() for n in m0}, 0.3, "global")
    assert all(torch.equal(m0[n], omp[n]) for n in m0)  # round 0 = one-shot magnitude of θp
    assert any(not torch.equal(m1[n], select({k: base[k].abs() for k in m0}, 0.51, "global")[n]) for n in m0)
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    assert all(bits_zero(final[n][~m1[n]]).all() for n in m1)
    assert torch.equal(load_masks(tmp_path / "prune_mask.safetensors")["bert.encoder.layer.0.intermediate.dense.weight"],
                       m1["bert.encoder.layer.0.intermediate.dense.weight"])
    rounds = json.loads((tmp_path / "masks/rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["best_main"] is not None and r["steps"] == 4 for r in rounds)
    assert rounds[0]["omp_mask_cosine"] == 1.0 and 0 < rounds[1]["omp_mask_cosine"] <= 1
    assert s["method_report"]["sparsity"]["target"] == pytest.approx(0.51)


def test_imp_default_is_the_lottery_ticket_procedure(tmp_path):
    """Round 0 trains the dense model; round 1 prunes p of the weights by the magnitude of the
    *trained* weights (not the pretrained ones) and rewinds to the pretrained values."""
    s = run_inprocess(tmp_path, [*TINY, "method=imp", "method.rounds=2", "method.prune_per_round=0.3", "trainer.max_steps=4",
                                 "trainer.checkpoint_every=4"])
    assert s["status"] == "completed", s.get("error")
    m0 = load_masks(tmp_path / "masks/round_0.safetensors")
    m1 = load_masks(tmp_path / "masks/round_1.safetensors")
    total = sum(k.numel() for k in m0.values())
    assert all(bool(k.all()) for k in m0.values())  # round 0: dense
    assert sum(int((~k).sum()) for k in m1.values()) == n_pruned(total, 0.3)
    rounds = json.loads((tmp_path / "masks/rounds.json").read_text())
    assert [r["sparsity"] for r in rounds] == [0.0, pytest.approx(0.3)]
    assert s["method_report"]["sparsity"]["target"] == pytest.approx(0.3) and s["method_report"]["dense_first"] is True
    base = base_state(tmp_path)
    omp = select({n: base[n].abs() for n in m1}, 0.3, "global")
    assert any(not torch.equal(m1[n], omp[n]) for n in m1)  # chosen on the trained weights, not θp
    # the random-mask floor beside the IMP/OMP cosine: ≈ the density at this size
    assert rounds[1]["random_mask_cosine"] == pytest.approx(0.7, abs=0.03)
    assert rounds[1]["omp_mask_cosine"] > rounds[1]["random_mask_cosine"]


def test_imp_rewinds_every_parameter_to_the_initial_weights(tmp_path):
    from sparse_ft.methods.base import Stage

    setup = Setup(tmp_path)
    module = setup.bundle.module
    initial = {n: p.detach().clone() for n, p in module.named_parameters()}
    method = setup.method("imp", rounds=2, prune_per_round=0.5)
    method.prepare(module, setup.ctx)
    method.begin_stage(0, Stage("round_0"), setup.ctx)
    with torch.no_grad():  # "training": every parameter moves
        for p in module.parameters():
            p.add_(0.01)
    method.apply_masks()
    method.begin_stage(1, Stage("round_1"), setup.ctx)
    for n, p in module.named_parameters():
        if n in method.keep:
            k = method.keep[n]
            assert torch.equal(p.detach()[k], initial[n][k]) and bits_zero(p.detach()[~k]).all()
        else:
            assert torch.equal(p.detach(), initial[n]), n
    assert method.rewind is None  # the last round began: nothing left to rewind to
    assert (tmp_path / "masks/round_1.safetensors").is_file()


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ("omp", {"sparsity": 1.0}, "sparsity"),
    ("omp", {"sparsity": -0.1}, "sparsity"),
    ("omp", {"pattern": "5:4"}, "pattern"),
    ("omp", {"pattern": "two:four"}, "pattern"),
    ("omp", {"scope": "block"}, "scope"),
    ("magnitude", {"sparsity": 1.5}, "sparsity"),
    ("magnitude", {"warmup_frac": 0.5, "cooldown_frac": 0.6}, "cooldown_frac"),
    ("movement", {"score_lr": 0}, "score_lr"),
    ("pst", {"r1": 0}, "r1"),
    ("pst", {"r2": -1}, "r2"),
    ("imp", {"rounds": 1}, "rounds"),
    ("imp", {"prune_per_round": 1.0}, "prune_per_round"),
]


@pytest.mark.parametrize("name,opts,key", BAD, ids=[f"{n}-{k}" for n, _, k in BAD])
def test_bad_option_values_fail_naming_the_key(name, opts, key):
    base = OmegaConf.to_container(compose([f"method={name}"]).method)
    with pytest.raises(ConfigError, match=rf"^method\.{key}\b"):
        registered()[name].validate(OmegaConf.create({**base, **opts}))


def test_model_dependent_bad_input_fails_in_prepare_naming_the_key(tmp_path):
    setup = Setup(tmp_path)
    with pytest.raises(ConfigError, match=r"^method\.pattern.*M=3 does not divide the input dimension 32"):
        setup.method("omp", pattern="2:3").prepare(setup.bundle.module, setup.ctx)
    with pytest.raises(ConfigError, match=r"^method\.modules.*'no_such_layer' matches no"):
        setup.method("magnitude", modules=["no_such_layer"]).prepare(setup.bundle.module, setup.ctx)
    with pytest.raises(ConfigError, match=r"^method\.modules"):
        setup.method("pst", modules=["(unclosed"]).wrap(setup.bundle, setup.ctx)


def test_a_run_with_modules_matching_nothing_stops_naming_the_key(tmp_path):
    with pytest.raises(SystemExit) as err:
        run_inprocess(tmp_path, [*TINY, "method=omp", "method.modules=[nothing_here]", "trainer.max_steps=2"])
    assert err.value.code == 2
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "failed" and "method.modules" in s["error"]


def test_default_targets_are_the_linear_layers_of_the_blocks():
    from sparse_ft.methods.pruning.targets import prunable
    from sparse_ft.models.vision import _small_resnet

    setup = Setup(Path("."))
    names = list(prunable(setup.bundle.module))
    assert len(names) == 12 and not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)
    net = _small_resnet([1, 1, 1, 1], 8, 10)
    conv = list(prunable(net))
    assert "fc.weight" not in conv and conv and all(n.endswith(".weight") for n in conv)
    assert list(prunable(setup.bundle.module, ["attention"])) == [n for n in names if ".attention." in n]


# --- sweeps and the inspect command ------------------------------------------------------------

PRUNING_SWEEPS = {"essential_sparsity": {"omp"}, "pst_glue": {"magnitude", "movement", "pst"}}


@pytest.mark.parametrize("sweep", sorted(PRUNING_SWEEPS))
def test_pruning_sweeps_compose_and_every_swept_value_validates(sweep):
    import itertools

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from conftest import REPO
    from sparse_ft.config.validation import check_unknown_keys, validate

    text = (REPO / "sweeps" / f"{sweep}.yaml").read_text()
    assert text.startswith("# @package _global_") and "A100-hours" in text and ("Figure" in text or "Table" in text)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        hcfg = hydra_compose(config_name="config", overrides=[f"+sweep={sweep}"], return_hydra_config=True)
        params = {k: str(v).split(",") for k, v in hcfg.hydra.sweeper.params.items()}
        assert "seed" in params and "task" in params
        methods = params.pop("method", [None])
        widest = max(len(v) for v in params.values())
        seen = set()
        for method, i in itertools.product(methods, range(widest)):
            overrides = [f"+sweep={sweep}"] + ([f"method={method}"] if method else [])
            overrides += [f"{k}={v[i % len(v)]}" for k, v in params.items()]
            cfg = hydra_compose(config_name="config", overrides=overrides)
            check_unknown_keys(cfg)
            validate(cfg)
            OmegaConf.to_container(cfg, resolve=True)  # the epochs grid resolves for every task
            registered()[cfg.method.name].validate(cfg.method)
            assert cfg.model.name_or_path == "bert-base-uncased" and cfg.trainer.epochs >= 3
            seen.add(cfg.method.name)
    assert seen == PRUNING_SWEEPS[sweep]


def test_inspect_weights_reports_near_zero_weights_per_module_type(tmp_path, capsys):
    from safetensors.torch import save_file

    from sparse_ft.tools.inspect_weights import main

    w = torch.tensor([0.0, 0.001, -0.005, 0.5, -0.2, 0.02, 0.009, 1.0])
    save_file({"enc.layer.0.ffn.weight": w.view(2, 4), "enc.layer.1.ffn.weight": -w.view(2, 4), "emb.weight": torch.ones(3, 2)}, str(tmp_path / "w.safetensors"))
    assert main(["weights", str(tmp_path / "w.safetensors"), "--eps", "0.01", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ffn = out["types"]["enc.layer.*.ffn.weight"]
    assert (ffn["tensors"], ffn["entries"], ffn["near_zero_fraction"], ffn["zero_fraction"]) == (2, 16, 4 / 8, 1 / 8)
    assert out["types"]["emb.weight"]["near_zero_fraction"] == 0.0
    assert main(["weights", "tiny_bert", "--sparsity", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prunable"]["tensors"] == 12
    pruned = sum(r.get("omp_pruned", 0) for r in out["types"].values())
    assert pruned == n_pruned(out["prunable"]["entries"], 0.5)
    assert out["types"]["encoder.layer.*.intermediate.dense.weight"]["module"] == "Linear"
    assert main(["weights", "tiny_bert"]) == 0
    assert "near-zero" in capsys.readouterr().out
    assert main(["weights", str(tmp_path / "missing.safetensors")]) == 2


def test_bench_nm_speedup_says_it_needs_cuda_on_a_cpu_machine():
    from sparse_ft.bench.pruning import nm_linear_speedup

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine measures the speedup")
    assert nm_linear_speedup() == ("needs CUDA", {})
