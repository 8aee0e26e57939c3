"""Conformance of the pruning family to the papers (issue 20): each method, driven through its own
hooks on a tiny two-layer network for one or two optimizer steps, against a reference computed
here from the papers' equations — never by calling the project's code:

* PST (Li et al. 2022, eq. 6; the authors' S4/PST code for the straight-through estimator and
  the optimizer): S = |W0 + UV| + λ(α1·AB + α2·(R ⊕ C)) after one SGD step, all six small
  matrices updated by ∂L/∂S = ∂L/∂(W⊙M) ⊙ W, and the mask the top-v of S per matrix;
* MvP (Sanh et al. 2020): the scores move by −η·∂L/∂(W⊙M) ⊙ W from |W| (the pruned entries with
  the value they had), the mask the top-v of the scores;
* MaP (Zhu & Gupta 2018): the mask the top-v of |W| after the step;
* OMP (Essential Sparsity): the global top-k of |W| over the prunable weights; N:M: the N largest
  |W| of every M consecutive inputs;
* IMP (lottery ticket, Frankle & Carbin; Essential Sparsity's LTH): round 0 dense, then per round
  p of the remaining weights pruned by the trained magnitudes, every parameter rewound to θ0.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_ft.methods.base import MethodContext, Stage
from sparse_ft.methods.registry import registered

LAYERS = ("blocks.0.weight", "blocks.1.weight")
METHODS = registered()  # every method module imported once, at collection (not inside a test's time)
torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # the optimizer's one-off imports, at collection too
LR_W, LR_S = 0.05, 0.1


class Tiny(nn.Module):
    """Two prunable layers (a ModuleList: the body) and a new head `fc`."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(16, 12), nn.Linear(12, 8)])
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.fc(x)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(10, 16, generator=g), torch.randint(0, 3, (10,), generator=g)


def make(name: str, tmp_path: Path, total_steps: int = 1, **opts):
    torch.manual_seed(0)
    module = Tiny()
    method = METHODS[name]({"name": name, **opts})
    ctx = MethodContext(run_dir=tmp_path, device=torch.device("cpu"), seed=0, train_features=[], collate=None, loss=None,
                        total_steps=total_steps)
    method.wrap(SimpleNamespace(module=module, newly_initialized=()), ctx)  # a bundle: the module and its untrained body parameters
    method.prepare(module, ctx)
    return module, method, ctx


def reference_forward(ws: list[torch.Tensor], module: Tiny, x, y) -> list[torch.Tensor]:
    """∂L/∂(W ⊙ M) of each layer for effective weights `ws`, by an independent forward."""
    leaves = [w.detach().clone().requires_grad_(True) for w in ws]
    h = x
    for w, b in zip(leaves, module.blocks):
        h = torch.tanh(F.linear(h, w, b.bias.detach()))
    F.cross_entropy(F.linear(h, module.fc.weight.detach(), module.fc.bias.detach()), y).backward()
    return [w.grad for w in leaves]


def top_v(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask: all but the round(s·n) lowest scores."""
    n = int(round(sparsity * score.numel()))
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[torch.argsort(score.reshape(-1))[:n]] = False
    return keep.view_as(score)


def at_step(step: int):
    """What a method's per-step event hooks read from the trainer: `trainer.state.step`."""
    from types import SimpleNamespace

    return SimpleNamespace(state=SimpleNamespace(step=step))


def one_step(module, method, x, y, step: int = 0):
    module.train()
    opt = torch.optim.SGD(method.param_groups(0.0), lr=LR_W)
    F.cross_entropy(module(x), y).backward()
    method.after_backward(at_step(step))
    opt.step()
    opt.zero_grad(set_to_none=True)
    method.after_step(at_step(step))


# --- PST -------------------------------------------------------------------------------------------


def test_pst_score_and_mask_after_one_step_follow_eq6(tmp_path):
    lam, a1, a2, s = 0.5, 0.7, 1.3, 0.5
    module, method, _ = make("pst", tmp_path, sparsity=s, warmup_frac=0.0, cooldown_frac=0.0, r1=2, r2=3, alpha1=a1, alpha2=a2, lam=lam)
    x, y = data()
    layers = [method.layers[n] for n in LAYERS]
    before = [{k: getattr(l, f"pst_{k}").detach().clone() for k in "UVABRC"} | {"W0": l.weight.detach().clone()} for l in layers]
    assert all(float(b["A"].std()) > 0.5 and float(b["U"].std()) > 0.5 for b in before)  # N(0, 1), the authors' init
    ws = [b["W0"] + b["U"] @ b["V"] for b in before]
    grads = reference_forward(ws, module, x, y)  # the mask is all ones before pruning starts
    one_step(module, method, x, y)
    for n, layer, b, w, G in zip(LAYERS, layers, before, ws, grads):
        gS = G * w  # ∂L/∂S, straight through the mask
        gW = G + gS * torch.sign(w)  # W ⊙ M and |W| in S
        A = b["A"] - LR_W * lam * a1 * gS @ b["B"].T
        B = b["B"] - LR_W * lam * a1 * b["A"].T @ gS
        R = b["R"] - LR_W * lam * a2 * gS.sum(1)
        C = b["C"] - LR_W * lam * a2 * gS.sum(0)
        U = b["U"] - LR_W * gW @ b["V"].T
        V = b["V"] - LR_W * b["U"].T @ gW
        S = (b["W0"] + U @ V).abs() + lam * (a1 * A @ B + a2 * (R[:, None] + C[None, :]))
        assert torch.allclose(method.scores()[n], S, atol=1e-6), n
        assert torch.equal(layer.pst_mask, top_v(S, s)), n
        assert torch.equal(layer.weight, b["W0"])  # W0 frozen
        exported = method.export(module)[n]
        assert torch.equal(exported == 0, ~top_v(S, s) | ((b["W0"] + U @ V) == 0))


# --- MvP and MaP -----------------------------------------------------------------------------------


def test_movement_scores_move_by_minus_grad_times_weight(tmp_path):
    s = 0.5
    module, method, _ = make("movement", tmp_path, sparsity=s, warmup_frac=0.0, cooldown_frac=0.0, score_lr=LR_S)
    x, y = data()
    W = [module.get_parameter(n).detach().clone() for n in LAYERS]
    G = reference_forward(W, module, x, y)
    one_step(module, method, x, y, 0)
    S = [w.abs() - LR_S * g * w for w, g in zip(W, G)]  # S = |W| − η·∂L/∂W ⊙ W
    W1 = [w - LR_W * g for w, g in zip(W, G)]
    M = [top_v(sc, s) for sc in S]
    for n, sc, m, w in zip(LAYERS, S, M, W1):
        assert torch.allclose(method.scores()[n], sc, atol=1e-7), n
        assert torch.equal(method.keep[n], m), n
        p = module.get_parameter(n).detach()
        assert torch.allclose(p[m], w[m], atol=1e-7) and (p[~m] == 0).all(), n
    # a second step: the gradient is ∂L/∂(W ⊙ M), the pruned entries' W is the value they had
    G2 = reference_forward([w.masked_fill(~m, 0.0) for w, m in zip(W1, M)], module, x, y)
    one_step(module, method, x, y, 1)
    for n, sc, g, w in zip(LAYERS, S, G2, W1):
        assert torch.allclose(method.scores()[n], sc - LR_S * g * w, atol=1e-6), n


def test_magnitude_mask_is_top_v_of_the_stepped_weights(tmp_path):
    s = 0.5
    module, method, _ = make("magnitude", tmp_path, sparsity=s, warmup_frac=0.0, cooldown_frac=0.0)
    x, y = data()
    W = [module.get_parameter(n).detach().clone() for n in LAYERS]
    G = reference_forward(W, module, x, y)
    one_step(module, method, x, y)
    for n, w, g in zip(LAYERS, W, G):
        w1 = w - LR_W * g
        m = top_v(w1.abs(), s)
        assert torch.equal(method.keep[n], m), n
        p = module.get_parameter(n).detach()
        assert torch.allclose(p[m], w1[m], atol=1e-7) and (p[~m] == 0).all(), n


# --- OMP, N:M --------------------------------------------------------------------------------------


def test_omp_is_the_global_top_k_of_the_pretrained_magnitudes(tmp_path):
    s = 0.6
    torch.manual_seed(0)
    tiny = Tiny()  # the same draw `make` gets
    orig = [tiny.get_parameter(n).detach() for n in LAYERS]
    module, method, _ = make("omp", tmp_path, sparsity=s, scope="global")
    flat = torch.cat([o.abs().reshape(-1) for o in orig])
    threshold = torch.topk(flat, flat.numel() - int(round(s * flat.numel()))).values.min()
    for n, o in zip(LAYERS, orig):
        keep = o.abs() >= threshold  # one threshold over every prunable weight
        assert torch.equal(method.keep[n], keep), n
        w = module.get_parameter(n).detach()
        assert torch.equal(w[keep], o[keep]) and (w[~keep] == 0).all(), n
    assert sum(int((~method.keep[n]).sum()) for n in LAYERS) == int(round(s * flat.numel()))


@pytest.mark.parametrize("nm", [(2, 4), (1, 4)])
def test_nm_keeps_the_n_largest_of_every_m_consecutive_inputs(nm, tmp_path):
    n_keep, m = nm
    torch.manual_seed(0)
    tiny = Tiny()  # the same draw `make` gets
    orig = [tiny.get_parameter(n).detach() for n in LAYERS]
    _, method, _ = make("omp", tmp_path, pattern=f"{n_keep}:{m}")
    for name, w in zip(LAYERS, orig):
        ref = torch.zeros_like(w, dtype=torch.bool)
        for r in range(w.shape[0]):
            for g0 in range(0, w.shape[1], m):
                group = w[r, g0:g0 + m].abs().tolist()
                for j in sorted(range(m), key=lambda j: -group[j])[:n_keep]:
                    ref[r, g0 + j] = True
        assert torch.equal(method.keep[name], ref), name
    assert method.target_sparsity() == 1 - n_keep / m


# --- IMP ---------------------------------------------------------------------------------------------


def test_imp_prunes_p_of_the_remaining_by_trained_magnitude_and_rewinds(tmp_path):
    p = 0.3
    module, method, ctx = make("imp", tmp_path, rounds=3, prune_per_round=p, scope="global")
    theta0 = {n: t.detach().clone() for n, t in module.named_parameters()}
    g = torch.Generator().manual_seed(2)
    total = sum(module.get_parameter(n).numel() for n in LAYERS)
    keep = {n: torch.ones_like(module.get_parameter(n), dtype=torch.bool) for n in LAYERS}
    for r in range(3):
        trained = {n: t.detach().clone() for n, t in module.named_parameters()}
        method.begin_stage(r, Stage(f"round_{r}"), ctx)
        sparsity = 1 - (1 - p) ** r  # round 0 dense, then p of the remaining each round
        assert method.rounds_info[-1]["sparsity"] == pytest.approx(sparsity)
        # reference: pruned entries stay pruned; the lowest trained |W| among the alive go next
        alive = torch.cat([trained[n][keep[n]].abs() for n in LAYERS])
        n_more = int(round(sparsity * total)) - sum(int((~keep[n]).sum()) for n in LAYERS)
        if n_more > 0:
            thr = torch.sort(alive).values[n_more - 1]
            keep = {n: keep[n] & (trained[n].abs() > thr) for n in LAYERS}
        assert sum(int((~keep[n]).sum()) for n in LAYERS) == int(round(sparsity * total))
        for n, t in module.named_parameters():
            if n in keep:
                assert torch.equal(method.keep[n], keep[n]), (r, n)
                assert torch.equal(t.detach(), theta0[n].masked_fill(~keep[n], 0.0)), (r, n)  # rewound, pruned
            else:
                assert torch.equal(t.detach(), theta0[n]), (r, n)  # the head rewinds too
        with torch.no_grad():  # "training": every parameter moves, differently per entry
            for t in module.parameters():
                t.add_(0.5 * torch.randn(t.shape, generator=g))
        method.apply_masks()
