"""Masks and exact sparse updates, unit by unit: top-k, random draws, the flat-vector optimizer,
mask files, BitFit's selection, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import compose
from sparse_ft.config.validation import ConfigError
from sparse_ft.methods import MethodContext, build_method, method_class
from sparse_ft.methods.masked.masking import (
    MASK_FILE,
    SparseUpdate,
    bits_differ,
    load_mask,
    mask_size,
    random_mask,
    save_mask,
    topk_mask,
)
from sparse_ft.models.heads import head_names


def toy(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3))


def reference_topk(scores: dict, k: int) -> dict:
    """Rank by (score desc, tensor order, flat index): the documented tie rule, done naively."""
    rows = [(-float(v), t, i) for t, (n, s) in enumerate(scores.items()) for i, v in enumerate(s.reshape(-1).tolist())]
    rows.sort()
    names = list(scores)
    out = {n: [] for n in names}
    for _, t, i in rows[:k]:
        out[names[t]].append(i)
    return {n: sorted(v) for n, v in out.items()}


@pytest.mark.parametrize("k", [1, 7, 40, 95, 100])
def test_topk_has_exactly_k_entries_and_breaks_ties_by_position(k):
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.randint(0, 4, (5, 6), generator=g).float(), "b": torch.randint(0, 4, (40,), generator=g).float(), "c": torch.full((30,), 2.0)}
    mask = topk_mask(scores, k)
    assert mask_size(mask) == k
    assert {n: i.tolist() for n, i in mask.items()} == reference_topk(scores, k)
    assert {n: i.tolist() for n, i in topk_mask(scores, k).items()} == {n: i.tolist() for n, i in mask.items()}


def test_topk_rejects_nan_scores():
    with pytest.raises(FloatingPointError, match="b"):
        topk_mask({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, 2)


@pytest.mark.parametrize("k", [1, 50, 600, 999])
def test_random_mask_exact_k_unique_and_seeded(k):
    numels = {"a": 300, "b": 0, "c": 700}
    m1, m2, m3 = random_mask(numels, k, 5), random_mask(numels, k, 5), random_mask(numels, k, 6)
    assert mask_size(m1) == k
    for n, idx in m1.items():
        assert idx.numel() == idx.unique().numel() and (idx.numel() == 0 or (0 <= int(idx.min()) and int(idx.max()) < numels[n]))
    assert all(torch.equal(m1[n], m2[n]) for n in numels)
    assert k == 999 or any(not torch.equal(m1[n], m3[n]) for n in numels)


def _train(module, mask, steps, opt_name, sparse=True, weight_decay=0.1, clip=1.0):
    """The trainer's order of calls: backward, after_backward, clip, step, zero both, after_step."""
    torch.manual_seed(3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    if sparse:
        upd = SparseUpdate(module, mask)
        groups = upd.param_groups(weight_decay)
    else:
        upd = None
        groups = [{"params": list(module.parameters()), "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=0.05) if opt_name == "adamw" else torch.optim.SGD(groups, lr=0.1)
    masks = {n: torch.zeros(p.numel()).index_fill_(0, mask[n], 1).view_as(p) if n in mask else torch.zeros_like(p) for n, p in module.named_parameters()}
    for _ in range(steps):
        nn.functional.cross_entropy(module(x), y).backward()
        if upd is not None:
            upd.gather_grads()
        else:
            for n, p in module.named_parameters():
                p.grad.mul_(masks[n])
        if clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        module.zero_grad(set_to_none=True)
        if upd is not None:
            upd.scatter()
    return opt


def _toy_mask(module):
    params = dict(module.named_parameters())
    return {"0.weight": torch.tensor([0, 5, 17, 40]), "1.bias": torch.arange(8), "3.weight": torch.tensor([2, 3, 23])} | {
        n: torch.zeros(0, dtype=torch.long) for n in params if n not in ("0.weight", "1.bias", "3.weight")
    }


def test_sparse_update_leaves_every_other_entry_bit_identical_under_adamw_with_decay():
    module = toy()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    mask = _toy_mask(module)
    opt = _train(module, mask, steps=8, opt_name="adamw", weight_decay=0.5)
    for n, p in module.named_parameters():
        changed = bits_differ(p.detach().view(-1), before[n].view(-1)).nonzero().view(-1)
        assert set(changed.tolist()) <= set(mask[n].tolist()), n
    assert sum(int(bits_differ(p.detach(), before[n]).sum()) for n, p in module.named_parameters()) == mask_size(mask)
    state = sum(v.numel() for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    assert state == 2 * mask_size(mask)  # exp_avg + exp_avg_sq over the k entries only
    assert not module[0].bias.requires_grad and module[0].weight.requires_grad


@pytest.mark.parametrize("opt_name,clip", [("sgd", 1.0), ("adamw", 0.0)])
def test_sparse_update_equals_masked_dense_training_bit_for_bit(opt_name, clip):
    # the naive way (dense optimizer, gradients masked) moves the masked entries exactly the
    # same when nothing else can move the rest (no decay; Adam with zero gradients stays put)
    a, b = toy(), toy()
    mask = _toy_mask(a)
    _train(a, mask, steps=5, opt_name=opt_name, weight_decay=0.0, clip=clip)
    _train(b, mask, steps=5, opt_name=opt_name, sparse=False, clip=clip)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_mask_file_round_trip_and_shape_mismatch_names_the_tensor(tmp_path):
    module = toy()
    mask = _toy_mask(module)
    save_mask(tmp_path / MASK_FILE, module, mask, {"method": "test"})
    loaded = load_mask(tmp_path, module)  # a run directory works as well as the file
    assert all(torch.equal(loaded[n], mask[n]) for n in mask)
    other = nn.Sequential(nn.Linear(6, 9), nn.LayerNorm(9), nn.ReLU(), nn.Linear(9, 3))
    with pytest.raises(ConfigError, match=r"method.mask_path.*'0\.weight'.*\[8, 6\].*\[9, 6\]"):
        load_mask(tmp_path / MASK_FILE, other)
    bigger = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="'4.weight'"):
        load_mask(tmp_path / MASK_FILE, bigger)
    with pytest.raises(ConfigError, match="no such mask file"):
        load_mask(tmp_path / "nope.safetensors", module)


def _tiny(model, task="synthetic_nli"):
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = compose([f"model={model}", f"task={task}", "task.max_train_samples=8", "task.max_eval_samples=8"])
    task_data = load_task(cfg.task, 0)
    return build_model(cfg.model, task_data), task_data


def _ctx(tmp_path, bundle, task_data=None):
    feats = bundle.encode(task_data, "train") if task_data is not None else []
    return MethodContext(tmp_path, torch.device("cpu"), 0, feats, bundle.collate, bundle.loss, bundle.per_example_loss,
                         bundle.logits if bundle.logits_fn else None, phase=None)


def test_heads_are_found():
    assert head_names(_tiny("tiny_bert")[0].module) == ["classifier.weight", "classifier.bias"]
    assert head_names(_tiny("tiny_t5")[0].module) == []
    assert head_names(_tiny("tiny_resnet", "digits")[0].module) == ["fc.weight", "fc.bias"]


def test_bitfit_trains_biases_and_head_and_refuses_t5(tmp_path):
    bundle, task_data = _tiny("tiny_bert")
    method = build_method(compose(["method=bitfit"]).method)
    method.prepare(bundle.module, _ctx(tmp_path, bundle, task_data))
    params = dict(bundle.module.named_parameters())
    expected = sum(p.numel() for n, p in params.items() if n.endswith(".bias") or n.startswith("classifier."))
    assert method.trainable_count() == expected == mask_size(method.mask)
    assert all(p.requires_grad == (n.endswith(".bias") or n.startswith("classifier.")) for n, p in params.items())
    t5, t5_task = _tiny("tiny_t5")
    with pytest.raises(ConfigError, match="no bias terms"):
        build_method(compose(["method=bitfit"]).method).prepare(t5.module, _ctx(tmp_path, t5, t5_task))


def test_random_mask_has_the_fish_budget(tmp_path):
    bundle, task_data = _tiny("tiny_bert")
    total = sum(p.numel() for p in bundle.module.parameters())
    method = build_method(compose(["method=random_mask", "method.density=0.01"]).method)
    method.prepare(bundle.module, _ctx(tmp_path, bundle, task_data))
    assert method.trainable_count() == round(0.01 * total)
    assert method.mask["classifier.weight"].numel() == bundle.module.classifier.weight.numel()


@pytest.mark.parametrize(
    "method,override,key",
    [
        ("fish", "method.density=0", "method.density"),
        ("fish", "method.density=1.5", "method.density"),
        ("fish", "method.fisher=bogus", "method.fisher"),
        ("fish", "method.num_samples=-1", "method.num_samples"),
        ("fish", "method.batch_size=0", "method.batch_size"),
        ("fish", "method.fisher_impl=magic", "method.fisher_impl"),
        ("random_mask", "method.density=-0.1", "method.density"),
        ("diff_pruning", "method.density=2", "method.density"),
        ("diff_pruning", "method.stretch_left=0.5", "method.stretch_left"),
    ],
)
def test_bad_method_values_fail_naming_the_key(method, override, key):
    cfg = compose([f"method={method}", override])
    with pytest.raises(ConfigError) as err:
        method_class(cfg.method.name).validate(cfg.method)
    assert str(err.value).startswith(key)


def test_every_sparse_method_config_validates():
    for name in ("fish", "random_mask", "bitfit", "diff_pruning"):
        cfg = compose([f"method={name}"]).method
        method_class(name).validate(cfg)
        assert all(isinstance(k, str) for k in OmegaConf.to_container(cfg))


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_opt", "minilm"])
def test_sampled_linear_weight_gradients_equal_the_masked_dense_ones(model):
    """The masked entries of ∂L/∂W computed as dot products (sampled_grads.py) equal those of the
    dense weight gradient, and no dense weight gradient is formed for those Linear weights."""
    from conftest import compose
    from sparse_ft.jobs.entry import seed_everything
    from sparse_ft.methods.masked.selection import named_params, random_mask
    from sparse_ft.methods.masked.sparse_update import SparseUpdate
    from sparse_ft.models import build_model
    from sparse_ft.tasks import load_task

    cfg = compose([f"model={model}", "task=synthetic_nli", "task.max_train_samples=32"])
    seed_everything(0)
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task, max_length=64)
    feats = bundle.encode(task, "train")
    batch = bundle.collate([feats[i] for i in range(8)])
    # float64 throughout: the two paths sum over the tokens in different orders (a GEMM and dot
    # products); in fp32 that alone gives ~1e-6 relative differences that depend on the BLAS build.
    module = bundle.module.eval().double()
    params = named_params(module)
    mask = random_mask({n: p.numel() for n, p in params.items()}, sum(p.numel() for p in params.values()) // 100, 1)
    grads = {}
    for sampled in (False, True):
        update = SparseUpdate(module, mask, sampled_linear_grads=sampled)
        module.zero_grad(set_to_none=True)
        bundle.loss(batch).backward()
        update.gather_grads()
        grads[sampled] = torch.cat([update.flat[d].grad.clone() for d in (True, False) if update.flat[d] is not None])
        if sampled:
            assert update.linears.installed, "no Linear layer got masked gradients"
            assert all(layer.weight.grad is None for layer in update.linears.installed)
        update.close()
    dense, fast = grads[False], grads[True]
    assert dense.dtype == fast.dtype == torch.float64
    # relative error in norm, bounded by float64 rounding over the reduction each weight-gradient
    # entry is (a sum over the batch's n tokens): 16·n·eps ≈ 7e-13 here (cancellation between tokens
    # gave up to 6e-15 on tiny_bert); a wrong or missing entry gives 1e-2 or more
    n = batch["input_ids"].numel()
    assert float(torch.linalg.norm(dense - fast) / torch.linalg.norm(dense)) < 16 * n * torch.finfo(torch.float64).eps
    assert all("forward" not in vars(m) for m in module.modules())  # close() restored every forward


def test_the_report_says_where_the_mask_lands():
    from sparse_ft.methods.masked.selection import mask_by_type

    mask = {"bert.encoder.layer.0.attention.self.query.weight": torch.arange(3), "bert.encoder.layer.1.attention.self.query.weight": torch.arange(2),
            "bert.pooler.dense.weight": torch.arange(10), "classifier.bias": torch.zeros(0, dtype=torch.long)}
    assert mask_by_type(mask) == {"bert.pooler.dense.weight": 10, "bert.encoder.layer.*.attention.self.query.weight": 5}


def test_fish_head_warmup_moves_only_the_head_and_changes_where_the_mask_lands(tmp_path):
    from conftest import run_inprocess

    common = ["model=tiny_bert", "task=synthetic_nli", "task.max_train_samples=64", "task.max_eval_samples=16", "method=fish",
              "method.num_samples=32", "method.density=0.002", "trainer.max_steps=1", "trainer.lr=1e-12"]
    cold = run_inprocess(tmp_path / "cold", common)
    warm = run_inprocess(tmp_path / "warm", [*common, "method.head_warmup_steps=20", "method.head_warmup_lr=0.05"])
    r = warm["method_report"]
    assert r["head_warmup_steps"] == 20 and math.isfinite(r["head_warmup_loss_last"])
    assert "head_warmup_steps" not in cold["method_report"]
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "cold/mask.safetensors")), load_file(str(tmp_path / "warm/mask.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the head decides where the Fisher is large
    assert warm["params"]["updated"] <= warm["params"]["trainable"]  # the warm-up trains the head only


def test_a_mask_change_keeps_the_adam_moments_of_entries_that_stay():
    from sparse_ft.methods.masked.sparse_update import SparseUpdate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 2))
    x = torch.randn(8, 6)
    a = {"0.weight": torch.tensor([1, 4, 7, 20]), "0.bias": torch.zeros(0, dtype=torch.long), "1.weight": torch.arange(10), "1.bias": torch.tensor([0])}
    b = {"0.weight": torch.tensor([4, 9, 20, 25]), "0.bias": torch.tensor([2]), "1.weight": torch.arange(10), "1.bias": torch.tensor([0])}
    first = SparseUpdate(net, a)
    opt = torch.optim.AdamW(first.param_groups(0.01), lr=1e-2)
    for _ in range(3):
        net(x).pow(2).sum().backward()
        first.gather_grads()
        opt.step()
        opt.zero_grad()
        first.scatter()
    second = SparseUpdate(net, b)
    new = torch.optim.AdamW(second.param_groups(0.01), lr=1e-2)
    second.carry_state(first, opt, new)
    old_avg, new_avg = opt.state[first.flat[True]]["exp_avg"], new.state[second.flat[True]]["exp_avg"]
    old_pos = {int(i): o for i, o in zip(a["0.weight"], range(4))}
    for j, i in enumerate(b["0.weight"].tolist()):  # "0.weight" is the first decay segment in both
        assert float(new_avg[j]) == (float(old_avg[old_pos[i]]) if i in old_pos else 0.0)
    assert new.state[second.flat[True]]["step"] == opt.state[first.flat[True]]["step"]
    whole = [p for p in second.whole[True]] + [p for p in second.whole[False]]
    assert whole and all(new.state[p] is opt.state[p] for p in whole)  # tensors trained in full keep theirs
