"""PST — parameter-efficient sparse training (Li et al. 2022; METHODS.md §2).

Every prunable nn.Linear W0 ∈ R^{n×k} becomes a `PSTLinear`: W0 frozen, W = W0 + UV
(U ∈ R^{n×r2} zeros, V ∈ R^{r2×k} Kaiming-uniform, LoRA's initialisation), and the layer computes
(W ⊙ M) x with M = f(S, v), the top-v entries of

    S = |W0 + UV| + λ·(α1·AB + α2·(R ⊕ C))        (the paper's eq. 6; λ = 1 gives it exactly)

A ∈ R^{n×r1} (Gaussian, std 0.02), B ∈ R^{r1×k} (zeros) learn through the mask with the
straight-through estimator (∂L/∂S = ∂L/∂(W⊙M) ⊙ W, as in movement pruning) in the run's optimizer;
R ∈ R^n, C ∈ R^k accumulate the structured scores every optimizer step,
R ← R − rowsum(∂L/∂W ⊙ W), C ← C − colsum(∂L/∂W ⊙ W) (eq. 4, with the descent sign of the movement
score it compresses; the paper prints eqs. 3–4 without it). They are parameters whose gradient the
same straight-through product gives (so DDP averages it across ranks), but the optimizer never
sees them: `after_backward` adds their gradient into them.

Only U, V, A, B, R, C — (n + k)(r1 + r2 + 1) per matrix, the paper's count — and the new task head
train (biases / LayerNorm too with `train_bias` / `train_layernorm`); `params.trainable` is that
count and `params.added` the small matrices. The mask follows the cubic schedule
(`scope=layer`: f(S, v) per matrix, the paper's form) and is re-chosen every `prune_every` steps
through the cool-down. `export` materialises W̃ = (W0 + UV) ⊙ M in the base model's layout: the
final checkpoint is a plain sparse model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.options import option
from ..base import Method, MethodContext, decay_groups
from ..masked.selection import head_names
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
    train_bias: bool = option(False, "also train the biases of the model (besides U, V, A, B and the head)")
    train_layernorm: bool = option(False, "also train the LayerNorm weights and biases")


class PSTLinear(nn.Linear):
    """A frozen nn.Linear W0 with PST's small matrices; `weight` and `bias` keep their names."""

    def __init__(self, base: nn.Linear, r1: int, r2: int, alpha1: float, alpha2: float, lam: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is not None:
            self.bias = base.bias
        else:
            self.register_parameter("bias", None)
        n, k = self.weight.shape
        f = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.pst_U = nn.Parameter(torch.zeros(n, r2, **f))
        self.pst_V = nn.Parameter(torch.empty(r2, k, **f))
        nn.init.kaiming_uniform_(self.pst_V, a=math.sqrt(5))
        self.pst_A = nn.Parameter(torch.empty(n, r1, **f))
        nn.init.normal_(self.pst_A, std=0.02)
        self.pst_B = nn.Parameter(torch.zeros(r1, k, **f))
        self.pst_R = nn.Parameter(torch.zeros(n, **f))
        self.pst_C = nn.Parameter(torch.zeros(k, **f))
        self.register_buffer("pst_mask", torch.ones(n, k, dtype=torch.bool, device=self.weight.device))
        self.alpha1, self.alpha2, self.lam = float(alpha1), float(alpha2), float(lam)

    def merged(self) -> torch.Tensor:
        return self.weight + self.pst_U @ self.pst_V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.merged()
        if torch.is_grad_enabled():
            # value: the mask; gradient: straight through to A, B (λα1·AB) and R, C (unit weight,
            # so their gradient is exactly rowsum/colsum of ∂L/∂W ⊙ W)
            t = (self.lam * self.alpha1) * (self.pst_A @ self.pst_B) + self.pst_R[:, None] + self.pst_C[None, :]
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
        self.heads = head_names(module)
        norms = {f"{mn}.{pn}" if mn else pn for mn, m in module.named_modules() if _is_norm(m) for pn, _ in m.named_parameters(recurse=False)}
        for wname, (mname, linear) in targets.items():
            parent_name, _, child = mname.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            layer = PSTLinear(linear, o.r1, o.r2, o.alpha1, o.alpha2, o.lam)
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
    def prepare(self, module: nn.Module, ctx: MethodContext) -> None:
        Method.prepare(self, module, ctx)
        self.ctx = ctx
        self.total_steps = int(ctx.total_steps)
        self.params = {n: layer.weight for n, layer in self.layers.items()}
        self.targets = {n: (n.rsplit(".", 1)[0], layer) for n, layer in self.layers.items()}
        state = self.take_resume()  # the masks, R and C were restored with the module's weights
        if state is not None:
            self.level = float(state.get("level", 0.0))
            self.stats.update(state.get("stats") or {})

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(((n, p) for n, p in self.module.named_parameters() if not (n.endswith(".pst_R") or n.endswith(".pst_C"))), weight_decay)

    @torch.no_grad()
    def after_backward(self, step: int) -> None:
        for layer in self.layers.values():
            for p in (layer.pst_R, layer.pst_C):
                if p.grad is not None:
                    p.sub_(p.grad)
                    p.grad = None

    def apply_masks(self) -> None:
        """Nothing to write: the mask multiplies W0 + UV inside the layer."""

    def after_step(self, step: int) -> None:
        t = self.due(step + 1)
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
        )
        return out
