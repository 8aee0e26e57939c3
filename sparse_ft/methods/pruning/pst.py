"""PST — parameter-efficient sparse training (Li et al. 2022; METHODS.md §2), as the authors'
code (AliceMind `S4/PST`) runs it where the paper is silent.

Every prunable nn.Linear W0 ∈ R^{n×k} becomes a `PSTLinear`: W0 frozen, W = W0 + UV
(U ∈ R^{n×r2} ~ N(0, 1), V ∈ R^{r2×k} zeros: the authors' initialisation), and the layer computes
(W ⊙ M) x with M = f(S, v), the top-v entries of

    S = |W0 + UV| + λ·(α1·AB + α2·(R ⊕ C))        (the paper's eq. 6; λ = 1 gives it exactly)

A ∈ R^{n×r1} ~ N(0, 1) (`torch.randn`, the authors' code; at a small std the learned terms vanish
beside |W0 + UV| and the mask is the magnitude mask), B ∈ R^{r1×k} zeros, R ∈ R^n, C ∈ R^k zeros.
The mask is straight-through: ∂L/∂S = ∂L/∂(W⊙M) ⊙ W, passed to the *whole* score — to A, B, R, C
(scaled by λα1, λα2) and through |W0 + UV| to U and V — and A, B, R, C, U, V are all trained by
the run's optimizer (the authors' code). `rc_update=accumulate` is the paper's eq. 4 read
literally instead: R and C stay outside the optimizer and add up the structured movement every
optimizer step, R ← R − rowsum(∂L/∂W ⊙ W), C ← C − colsum(∂L/∂W ⊙ W) (the descent sign of the
movement score; the paper prints eqs. 3–4 without it).

Only U, V, A, B, R, C — (n + k)(r1 + r2 + 1) per matrix, the paper's count — and the new task head
train, with the body's parameters that hold no trained values (MiniLM's never-trained pooler: the
rule every body-freezing method shares, `petl.side.new_params`); biases / LayerNorm too with
`train_bias` / `train_layernorm`. `params.trainable` is that count, `params.added` the small
matrices, `params.trainable_fraction_mvp_basis` the fraction on the paper's basis (MvP's
trainables). The mask follows the cubic schedule (`scope=layer`: f(S, v) per matrix, the paper's
form) and is re-chosen every `prune_every` steps through the cool-down; evaluations count for
`trainer.select_best` only at the final sparsity (the authors report the best cool-down epoch).
`export` materialises W̃ = (W0 + UV) ⊙ M in the base model's layout: the final checkpoint is a
plain sparse model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...core.options import option
from ..base import Method, MethodContext, decay_groups
from ..petl.side import new_params
from ..registry import register
from .base import ScheduledPruning, ScheduleOptions
from .targets import prunable

log = logging.getLogger(__name__)

TAG = ".pst_"


@dataclass
class PstOptions(ScheduleOptions):
    r1: int = option(8, "rank of the low-rank data-driven score A·B (A: n×r1, B: r1×k)", low=1)
    r2: int = option(8, "rank of the weight update U·V (W = W0 + UV; U: n×r2, V: r2×k)", low=1)
    alpha1: float = option(1.0, "α1: weight of the low-rank score A·B", low=0)
    alpha2: float = option(1.0, "α2: weight of the structured scores R + C", low=0)
    lam: float = option(1.0, "λ: weight of the data-driven score α1·AB + α2·(R + C) beside |W0 + UV|", low=0)
    rc_update: Literal["optimizer", "accumulate"] = option(
        "optimizer", "optimizer: R and C are parameters the run's optimizer trains through the full-score straight-through "
                     "estimator (the authors' code) | accumulate: the paper's eq. 4 literally, R -= rowsum(dL/dW * W), "
                     "C -= colsum(dL/dW * W) every optimizer step, outside the optimizer")
    train_bias: bool = option(False, "also train the biases of the model (besides U, V, A, B and the head)")
    train_layernorm: bool = option(False, "also train the LayerNorm weights and biases")


class PSTLinear(nn.Linear):
    """A frozen nn.Linear W0 with PST's small matrices; `weight` and `bias` keep their names."""

    def __init__(self, base: nn.Linear, r1: int, r2: int, alpha1: float, alpha2: float, lam: float, rc_update: str = "optimizer"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        else:
            self.register_parameter("bias", None)
        n, k = self.weight.shape
        f = {"device": self.weight.device, "dtype": self.weight.dtype}
        # the authors' initialisation (S4/PST pst/sparse.py): U, A ~ N(0, 1); V, B, R, C zeros
        self.pst_U = nn.Parameter(torch.randn(n, r2, **f))
        self.pst_V = nn.Parameter(torch.zeros(r2, k, **f))
        self.pst_A = nn.Parameter(torch.randn(n, r1, **f))
        self.pst_B = nn.Parameter(torch.zeros(r1, k, **f))
        self.pst_R = nn.Parameter(torch.zeros(n, **f))
        self.pst_C = nn.Parameter(torch.zeros(k, **f))
        self.register_buffer("pst_mask", torch.ones(n, k, dtype=torch.bool, device=self.weight.device))
        self.alpha1, self.alpha2, self.lam = float(alpha1), float(alpha2), float(lam)
        self.rc_update = str(rc_update)

    def merged(self) -> torch.Tensor:
        return self.weight + self.pst_U @ self.pst_V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.merged()
        if torch.is_grad_enabled():
            # value: the mask; gradient: straight through to the whole score S (∂L/∂S = ∂L/∂(W⊙M) ⊙ W),
            # hence to |W0 + UV| (U, V), λα1·AB and λα2·(R ⊕ C). With rc_update=accumulate R and C
            # enter with unit weight, so their gradient is exactly rowsum/colsum of ∂L/∂W ⊙ W.
            rc = self.pst_R[:, None] + self.pst_C[None, :]
            rc_weight = self.lam * self.alpha2 if self.rc_update == "optimizer" else 1.0
            t = w.abs() + (self.lam * self.alpha1) * (self.pst_A @ self.pst_B) + rc_weight * rc
            w = w * (self.pst_mask.to(w.dtype) + (t - t.detach()))
        else:
            w = w * self.pst_mask
        return F.linear(x, w, self.bias)

    @torch.no_grad()
    def score(self) -> torch.Tensor:
        data = self.alpha1 * (self.pst_A @ self.pst_B) + self.alpha2 * (self.pst_R[:, None] + self.pst_C[None, :])
        return (self.merged().abs() + self.lam * data).float()

    @torch.no_grad()
    def materialize(self) -> torch.Tensor:
        return self.merged().masked_fill(~self.pst_mask, 0.0)

    def small_count(self) -> int:
        return sum(getattr(self, f"pst_{x}").numel() for x in "UVABRC")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@register("pst")
class ParameterEfficientSparseTraining(ScheduledPruning):
    """PST: S = |W0+UV| + λ(α1·AB + α2·(R+C)), top-v on the cubic schedule; only U, V, A, B, R, C (+ head) train."""

    name = "pst"
    Options = PstOptions
    monotone = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self.layers: dict[str, PSTLinear] = {}
        self.heads: list[str] = []

    # --- the model ----------------------------------------------------------------------------
    def wrap(self, bundle, ctx: MethodContext):
        module, o = bundle.module, self.opts
        targets = prunable(module, o.modules, kinds=(nn.Linear,))
        self.heads = new_params(bundle, self.name)  # the new head + body parameters with no trained values (one rule)
        norms = {f"{mn}.{pn}" if mn else pn for mn, m in module.named_modules() if _is_norm(m) for pn, _ in m.named_parameters(recurse=False)}
        for wname, (mname, linear) in targets.items():
            parent_name, _, child = mname.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            layer = PSTLinear(linear, o.r1, o.r2, o.alpha1, o.alpha2, o.lam, o.rc_update)
            setattr(parent, child, layer)
            self.layers[wname] = layer
        head = set(self.heads)
        for n, p in module.named_parameters():
            trains = TAG in n or n in head or (o.train_bias and n.endswith(".bias")) or (o.train_layernorm and n in norms)
            p.requires_grad_(bool(trains))
        log.info("pst: %d linear layers wrapped (r1=%d, r2=%d); %d small-matrix parameters", len(self.layers), o.r1, o.r2, self.added_count())
        return bundle

    def added_count(self) -> int:
        return sum(layer.small_count() for layer in self.layers.values())

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        out = {k: v.detach().clone() for k, v in module.state_dict().items() if TAG not in k}
        for name, layer in self.layers.items():
            out[name] = layer.materialize().contiguous()
        return out

    def parameter_names(self, module: nn.Module) -> list[str]:
        return [n for n, _ in module.named_parameters() if TAG not in n]

    # --- hooks --------------------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext, resumed: dict | None = None) -> None:
        Method.prepare(self, module, ctx)
        self.ctx = ctx
        self.total_steps = int(ctx.total_steps)
        self.params = {n: layer.weight for n, layer in self.layers.items()}
        self.targets = {n: (n.rsplit(".", 1)[0], layer) for n, layer in self.layers.items()}
        if resumed is not None:  # the masks, R and C were restored with the module's weights
            self.level = float(resumed.get("level", 0.0))
            self.stats.update(resumed.get("stats") or {})

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.opts.rc_update == "optimizer":  # the authors' code: R and C are ordinary parameters
            return decay_groups(self.module.named_parameters(), weight_decay)
        return decay_groups(((n, p) for n, p in self.module.named_parameters() if not (n.endswith(".pst_R") or n.endswith(".pst_C"))), weight_decay)

    @torch.no_grad()
    def after_backward(self, trainer) -> None:
        if self.opts.rc_update == "optimizer":
            return
        for layer in self.layers.values():
            for p in (layer.pst_R, layer.pst_C):
                if p.grad is not None:
                    p.sub_(p.grad)
                    p.grad = None

    def apply_masks(self) -> None:
        """Nothing to write: the mask multiplies W0 + UV inside the layer."""

    def after_step(self, trainer) -> None:
        t = self.due(trainer.state.step + 1)
        if t is not None:
            self.reprune(t)

    def scores(self) -> dict[str, torch.Tensor]:
        return {n: layer.score() for n, layer in self.layers.items()}

    @torch.no_grad()
    def reprune(self, sparsity: float) -> None:
        new = self.choose(self.scores(), sparsity)
        for n, layer in self.layers.items():
            layer.pst_mask.copy_(new[n])
        self.level = sparsity
        self.stats["mask_updates"] = self.stats.get("mask_updates", 0) + 1

    @property
    def keep(self) -> dict[str, torch.Tensor]:
        return {n: layer.pst_mask for n, layer in self.layers.items()}

    @keep.setter
    def keep(self, value) -> None:  # the base class initialises it; PST's masks live in the layers
        pass

    def trainable_count(self) -> int:
        """U, V, A, B, R, C and the head (plus biases / LayerNorm where configured)."""
        return Method.trainable_count(self)

    def state_dict(self) -> dict:
        return {"level": self.level, "stats": dict(self.stats)}

    def report(self) -> dict:
        out = super().report()
        out.update(
            merged_entries=sum(layer.weight.numel() for layer in self.layers.values()),  # W̃ = (W0 + UV) ⊙ M
            small_matrix_params=self.added_count(),
            head_params=sum(p.numel() for n, p in self.module.named_parameters() if n in set(self.heads)),
            r1=int(self.opts.r1), r2=int(self.opts.r2), alpha1=float(self.opts.alpha1), alpha2=float(self.opts.alpha2), lam=float(self.opts.lam),
            rc_update=self.opts.rc_update, trained_with_head=list(self.heads),
        )
        return out
