"""Diff pruning (Guo et al. 2021): learn a sparse difference vector δ = z ⊙ w on top of the frozen
pretrained θ0, with the hard-concrete relaxation of the L0 norm, and project δ to exactly the
target density at the end.

    θ = θ0 + z ⊙ w,   z = min(1, max(0, s·(r − l) + l)),   s = σ((log u − log(1 − u) + α) / β),
    u ~ U(0, 1),      L0 penalty  λ Σ σ(α − β log(−l / r))       (Louizos et al. 2018)

Defaults follow Guo et al. and their code (dguo98/DiffPruning, where the paper is silent):
l = −1.5, r = 1.5, β = 1, α initialised to 5, w to 0, λ = 1.25e-7; the gate logits α train in an
optimizer group of their own at lr 0.1 (the authors' separate Adam for α), held constant (their α
scheduler is never stepped) — at the model's lr (5e-5) the gates do not move, the L0 relaxation
does nothing and the method degenerates to magnitude pruning of a dense update. After the
projection to exactly k entries, Guo et al.'s second stage fine-tunes δ with the mask fixed
(`finetune_epochs` = 3 at `finetune_lr` = 5e-5, as in their scripts): on by default.

Structured diff pruning (Guo et al. §3.3), the default: one more gate z_g per group, the group
being a weight matrix or bias vector (a parameter tensor: the authors' `per_params_alpha`, which
their script turns on by default — so the FISH paper's Diff Pruning figure, reproduced "following
the paper's code base", is this variant): δ_i = z_i · z_g · w_i. The L0 penalty is the authors'
script's, λ (Σ_i σ(α_i − c) + Σ_g σ(α_g − c)) with c = β log(−l/r), the group term once per group
(`group_penalty=sum`); `group_penalty=product` is the paper's expected L0 norm
Σ_g σ(α_g − c) · Σ_{i∈g} σ(α_i − c), the expected count of non-zero δ entries, which is also what
`l0_expected_density` reports either way. `structured=false` is the basic (unstructured) method.

How it runs here. The module keeps its ordinary parameters (checkpoints, `select_best` and
resume see the usual keys): they *hold* θ = θ0 + z ⊙ w for the current gate sample, and the
method applies the chain rule itself — `after_backward` turns ∂L/∂θ into ∂L/∂w = ∂L/∂θ ⊙ z and
∂L/∂α = ∂L/∂θ ⊙ w ⊙ ∂z/∂α; the L0 penalty comes through `extra_loss()` (autograd gives its α
gradient); `after_step` draws a new gate sample and writes θ again. Whenever the model is
evaluated (eval mode), its weights are θ0 + the *projected* δ: the deterministic gates
z = clamp(σ(α)(r − l) + l, 0, 1), then the k largest |δ| entries over all tensors (k = density·|θ|
minus the new head, which is trained in full and counted inside k) — so every evaluation, the
best-checkpoint selection and the final weights see exactly the sparse model that is stored, and
`finalize` writes θ0 + projected δ (updated entries = k). Structured, z is z_i·z_g throughout (the
deterministic gates too). `method_report.stage1_l0_expected_density` is E‖δ‖₀/|δ| when the gates
stop (start of the second stage). `trainer.max_grad_norm` clips the gradients of α (and α_g) apart
from those of w and the head, as the authors' script does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...core.options import option
from ...models.heads import head_names
from ..base import Method, MethodContext, SelectionChanges, Stage, Staged, decay_groups
from .masking import MASK_FILE, MaskedOptions, SparseUpdate, SparseDelta, bits_differ, budget, named_params, save_mask, topk_mask
from ..registry import register

log = logging.getLogger(__name__)


@dataclass
class DiffPruningOptions(MaskedOptions):
    density: float = option(0.005, "k/|θ| of the final projected δ (head included): the paper's 0.5%", low=0, low_open=True, high=1)
    l0_lambda: float = option(1.25e-7, "λ: weight of the expected-L0 penalty (Guo et al.)", low=0)
    alpha_init: float = option(5.0, "initial log α of every gate (z ≈ 1 at the start)")
    alpha_lr: float | None = option(0.1, "learning rate of the gate logits α, in an optimizer group of their own (Guo et al.'s separate Adam: 0.1); null = trainer.lr", low=0, low_open=True)
    alpha_lr_schedule: str = option("constant", "α's lr over stage 1: constant (the authors' α scheduler is never stepped) | trainer (trainer.scheduler's warm-up and decay)", choices=("constant", "trainer"))
    structured: bool = option(True, "structured diff pruning (Guo et al. §3.3; the authors' script's default, behind the FISH paper's figure): one extra shared gate per parameter tensor (weight matrix / bias vector), δ = z_i·z_g·w; false = the basic method")
    group_penalty: str = option("sum", "structured L0 penalty: sum (the authors' script: Σσ(α_i−c) + σ(α_g−c) once per group) | product (the paper's expected L0: σ(α_g−c)·Σσ(α_i−c))", choices=("sum", "product"))
    temperature: float = option(1.0, "β of the hard-concrete distribution", low=0, low_open=True)
    stretch_left: float = option(-1.5, "l: hard-concrete stretch interval (l, r), l < 0", high=0, high_open=True)
    stretch_right: float = option(1.5, "r: > 1, so that z is exactly 0 or 1 with positive probability", low=1, low_open=True)
    finetune_epochs: int = option(3, "Guo et al.'s second stage: after the projection to k entries, fine-tune the projected δ with the mask fixed for this many epochs (the paper's 3; 0 and finetune_steps 0 = no second stage)", low=0)
    finetune_steps: int = option(0, "> 0: the second stage runs this many optimizer steps instead of finetune_epochs (short runs, tests)", low=0)
    finetune_lr: float | None = option(5e-5, "peak lr of the second stage (Guo et al.: 5e-5); null = trainer.lr", low=0, low_open=True)


@register("diff_pruning")
class DiffPruning(Staged, SelectionChanges, Method):
    name = "diff_pruning"

    Options = DiffPruningOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.l, self.r = float(cfg.stretch_left), float(cfg.stretch_right)
        self.beta = float(cfg.temperature)
        self.lam = float(cfg.l0_lambda)
        self.state = "train"  # which weights the module holds: "train" (θ0 + z⊙w) or "eval" (projected)
        self._cache_key = None
        self._projection: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._written = None
        self._version = 0
        self.stats: dict = {}
        self.update: SparseUpdate | None = None  # the second stage: exact sparse updates over the projection

    # --- set-up ----------------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext, resumed: dict | None = None) -> None:
        self.module = module
        params = named_params(module)
        self.head = head_names(module) if self.cfg.get("classifier_in_mask", True) else []
        self.body = [n for n in params if n not in self.head]
        total = sum(p.numel() for p in params.values())
        head_size = sum(params[n].numel() for n in self.head)
        self.k = budget(total, float(self.cfg.density))
        self.k_body = max(0, self.k - head_size)
        self.stats = {"total_params": total, "head_params": head_size, "target_k": self.k}
        if resumed is not None:  # θ0, w and α (and the gate sample) come from the checkpoint
            self.theta0 = [t.to(params[n].device) for n, t in zip(self.body, resumed["theta0"])]
            self.w = [nn.Parameter(t.to(params[n].device)) for n, t in zip(self.body, resumed["w"])]
            self.log_alpha = [nn.Parameter(t.to(params[n].device)) for n, t in zip(self.body, resumed["log_alpha"])]
            self.group_alpha = [nn.Parameter(t.to(params[n].device)) for n, t in zip(self.body, resumed.get("group_alpha") or [])]
            self.delta = SparseDelta.from_state(resumed["delta"])
            self._version = 1
        else:
            self.theta0 = [params[n].detach().clone() for n in self.body]
            self.w = [nn.Parameter(torch.zeros_like(params[n], dtype=torch.float32)) for n in self.body]
            self.log_alpha = [nn.Parameter(torch.full_like(params[n], float(self.cfg.alpha_init), dtype=torch.float32)) for n in self.body]
            self.group_alpha = ([nn.Parameter(torch.full((1,), float(self.cfg.alpha_init), device=params[n].device)) for n in self.body]
                                if self.cfg.get("structured", True) else [])
            self.delta = SparseDelta.capture(module, ctx, full_names=head_names(module))
        self.run_dir = ctx.run_dir
        for n, p in params.items():
            p.requires_grad_(True)  # ∂L/∂θ for every entry (the body's is routed to w and α)
        self.params = [params[n] for n in self.body]
        self.head_params = [(n, params[n]) for n in self.head]
        if resumed is not None:  # the gate sample of the interrupted step: resume is exact
            self.s = [t.to(params[n].device) for n, t in zip(self.body, resumed["s"])]
            self.s_group = [t.to(params[n].device) for n, t in zip(self.body, resumed.get("s_group") or [])]
        else:
            self._sample()
        if resumed is not None and resumed.get("finetune_mask") is not None:  # resumed inside the second stage
            self._start_finetune(resumed["finetune_mask"])
            return
        self._write_train()
        self._hooks = [m.register_forward_pre_hook(self._pre_forward) for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
        log.info(
            "diff_pruning: δ over %d entries (%d tensors), projected at evaluation to k=%d (%.4f%%, head %d in full)",
            sum(p.numel() for p in self.params), len(self.params), self.k, 100 * self.k / total, head_size,
        )

    # --- Guo et al.'s second stage --------------------------------------------------------------
    def stages(self) -> list[Stage]:
        steps, epochs = int(self.cfg.get("finetune_steps", 0)), int(self.cfg.get("finetune_epochs", 0))
        if not steps and not epochs:
            return [Stage("diff")]
        second = {"max_steps": steps, "epochs": epochs}  # steps > 0 wins over epochs (the trainer's rule)
        if self.cfg.get("finetune_lr") is not None:
            second["lr"] = float(self.cfg.finetune_lr)
        return [Stage("diff"), Stage("finetune_projection", second)]

    def begin_stage(self, index: int, stage: Stage, ctx: MethodContext) -> None:
        if index != 1:
            return
        self.stats["stage1_l0_expected_density"] = self._expected_density()  # the gates stop here
        if self._written is not None and self._versions() != self._written:
            # the trainer restored the best (projected) weights of stage 0: fine-tune those
            mask = {n: bits_differ(p.detach().view(-1), t0.view(-1)).nonzero().view(-1).cpu() for n, p, t0 in zip(self.body, self.params, self.theta0)}
        else:
            self._write_eval()  # θ0 + the projected δ of the last step
            mask = {n: idx.detach().cpu() for n, (idx, _) in self._project().items()}
        self._start_finetune(mask)

    def _start_finetune(self, mask: dict[str, torch.Tensor]) -> None:
        """From here on the projected entries (and the head) train with exact sparse updates; the
        gates and their hooks are gone and the module holds θ0 + δ as it trains."""
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []
        self.finetune_mask = mask
        full = {n: torch.arange(p.numel()) for n, p in self.head_params}
        self.update = SparseUpdate(self.module, {**mask, **full})
        self.state = "finetune"
        self.stats["finetune_entries"] = sum(int(i.numel()) for i in mask.values())
        log.info("diff_pruning: fine-tuning the projected δ (%d entries) with the mask fixed", self.stats["finetune_entries"])

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.update is not None:
            return self.update.param_groups(weight_decay)
        groups = [{"params": self.w, "weight_decay": 0.0}]
        alpha = {"params": [*self.log_alpha, *self.group_alpha], "weight_decay": 0.0}
        if self.cfg.get("alpha_lr") is not None:
            alpha["lr"] = float(self.cfg.alpha_lr)
        if self.cfg.get("alpha_lr_schedule", "constant") == "constant":
            alpha["constant_lr"] = True  # build_scheduler leaves this group's lr as it is
        alpha["clip_group"] = "diff_pruning_gates"  # trainer.max_grad_norm clips α apart from w, as the authors do
        groups.append(alpha)
        groups += decay_groups(self.head_params, weight_decay)
        return groups

    # --- hard-concrete gates -----------------------------------------------------------------
    def _stretch(self, s: torch.Tensor) -> torch.Tensor:
        return (s * (self.r - self.l) + self.l).clamp_(0.0, 1.0)

    def _concrete(self, a: torch.Tensor) -> torch.Tensor:
        u = torch.rand_like(a).clamp_(1e-6, 1 - 1e-6)
        return torch.sigmoid((u.log() - (-u).log1p() + a) / self.beta)

    @torch.no_grad()
    def _sample(self) -> None:
        self.s = [self._concrete(a) for a in self.log_alpha]
        self.s_group = [self._concrete(g) for g in self.group_alpha]

    def _group_gate(self, i: int, s: list[torch.Tensor] | None = None) -> torch.Tensor | float:
        """z_g of tensor i (structured): from the sample `s`, or the deterministic gate; 1 otherwise."""
        if not self.group_alpha:
            return 1.0
        return self._stretch(s[i] if s is not None else torch.sigmoid(self.group_alpha[i]))

    def _l0_terms(self, form: str = "product"):
        """Per tensor: Σ_i σ(α_i − β log(−l/r)), the expected count of open gates; structured, times
        the group's σ(α_g − …) (`product`, the expected L0 norm) or plus it once (`sum`, the authors')."""
        shift = self.beta * math.log(-self.l / self.r)
        for i, a in enumerate(self.log_alpha):
            term = torch.sigmoid(a - shift).sum()
            if not self.group_alpha:
                yield term
            else:
                group = torch.sigmoid(self.group_alpha[i] - shift).sum()
                yield term * group if form == "product" else term + group

    def extra_loss(self) -> torch.Tensor | None:
        if self.lam == 0 or self.update is not None:
            return None
        return self.lam * sum(self._l0_terms(self.cfg.get("group_penalty", "sum")))

    def after_backward(self, trainer) -> None:
        if self.update is not None:
            self.update.gather_grads()
            return
        span = self.r - self.l
        def gate(s):  # z and dz/dα of a hard-concrete sample s
            stretched = s * span + self.l
            inside = (stretched > 0) & (stretched < 1)
            return stretched.clamp(0.0, 1.0), (span / self.beta) * s * (1 - s) * inside

        with torch.no_grad():
            for i, (p, s, w, a) in enumerate(zip(self.params, self.s, self.w, self.log_alpha)):
                g = p.grad
                if g is None:
                    g = torch.zeros_like(w)
                g = g.float()
                z, dz = gate(s)
                zg, dzg = gate(self.s_group[i]) if self.group_alpha else (1.0, None)
                w.grad = g * z * zg
                ga = g * w * zg * dz
                a.grad = ga if a.grad is None else a.grad.add_(ga)
                if self.group_alpha:  # ∂L/∂α_g = Σ_i ∂L/∂θ_i · w_i · z_i · dz_g/dα_g
                    gg = (g * w * z).sum().reshape(1) * dzg
                    b = self.group_alpha[i]
                    b.grad = gg if b.grad is None else b.grad.add_(gg)

    def after_step(self, trainer) -> None:
        if self.update is not None:
            self.update.scatter()
            return
        self._version += 1
        self._sample()
        if self.module.training:
            self._write_train()
        else:
            self.state = "stale"

    def sync_to_module(self) -> None:
        """w and α were overwritten from outside (a local-SGD sync): rewrite the weights."""
        if self.update is not None:
            self.update.scatter()
            return
        self._version += 1
        if self.module.training:
            self._write_train()
        else:
            self.state = "stale"

    # --- which weights the module holds --------------------------------------------------------
    def _versions(self):
        return sum(p._version for p in self.params)

    @torch.no_grad()
    def _write_train(self) -> None:
        for i, (p, t0, s, w) in enumerate(zip(self.params, self.theta0, self.s, self.w)):
            p.copy_(t0 + self._stretch(s) * self._group_gate(i, self.s_group) * w)
        self.state = "train"
        self._written = self._versions()

    @torch.no_grad()
    def _project(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The k largest |δ| of the deterministic δ = clamp(σ(α)(r−l)+l, 0, 1) ⊙ w (× the group's
        deterministic gate, structured), non-zero entries only."""
        if self._cache_key == self._version:
            return self._projection
        with torch.inference_mode(False):
            deltas = {n: self._stretch(torch.sigmoid(a)) * self._group_gate(i) * w for i, (n, a, w) in enumerate(zip(self.body, self.log_alpha, self.w))}
            mask = topk_mask({n: d.abs() for n, d in deltas.items()}, min(self.k_body, sum(d.numel() for d in deltas.values())))
            projection = {}
            for n, idx in mask.items():
                d = deltas[n].view(-1)
                idx = idx.to(d.device)
                idx = idx[d[idx] != 0]
                projection[n] = (idx, d[idx].clone())
        self._projection, self._cache_key = projection, self._version
        return projection

    @torch.no_grad()
    def _write_eval(self) -> None:
        projection = self._project()
        for n, p, t0 in zip(self.body, self.params, self.theta0):
            idx, d = projection[n]
            p.copy_(t0)
            if idx.numel():
                p.view(-1).index_copy_(0, idx, t0.view(-1)[idx] + d.to(p.dtype))
        self.state = "eval"
        self._written = self._versions()

    def _pre_forward(self, m, args):
        want = "train" if m.training else "eval"
        if self.state == want:
            return
        if self._written is not None and self._versions() != self._written and want == "eval":
            # the weights were loaded from outside (the best checkpoint, restored): they hold
            # a projected model already; keep them
            self.state = "eval"
            self._written = self._versions()
            return
        self._write_eval() if want == "eval" else self._write_train()

    # --- the end -------------------------------------------------------------------------------
    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []
        if self.update is None and self.state != "eval" and not (self._written is not None and self._versions() != self._written):
            self._write_eval()
        sparse, mask, changed = {}, {}, 0
        for n, p, t0 in zip(self.body, self.params, self.theta0):
            now = p.detach().view(-1)
            diff = bits_differ(now, t0.view(-1)).nonzero().view(-1)
            mask[n] = diff.cpu()
            if diff.numel():
                sparse[n] = (diff.to(torch.int32).cpu(), now[diff].cpu())
                changed += diff.numel()
        out = self.delta.write(module, run_dir, explicit=sparse)
        for (n, _) in self.head_params:
            mask[n] = torch.arange(named_params(module)[n].numel())
        out[MASK_FILE] = save_mask(Path(run_dir) / MASK_FILE, module, mask, {"method": self.name, "k": self.k, "projected_entries": changed})
        self.stats.update(projected_entries=changed, l0_expected_density=self._expected_density())
        for p in self.params:
            p.grad = None
        return out

    @torch.no_grad()
    def _expected_density(self) -> float:
        """E[‖δ‖₀] / |δ| under the current gates (the L0 penalty's sum, before λ)."""
        total = sum(a.numel() for a in self.log_alpha)
        return float(sum(self._l0_terms())) / total if total else 0.0

    # --- bookkeeping -----------------------------------------------------------------------------
    def trainable_count(self) -> int:
        """Entries that may differ from θ0 at the end: the projected δ (k minus the head) + head."""
        return self.k

    def state_dict(self) -> dict:
        return {
            "theta0": [t.detach().cpu() for t in self.theta0],
            "w": [w.detach().cpu() for w in self.w],
            "log_alpha": [a.detach().cpu() for a in self.log_alpha],
            "group_alpha": [a.detach().cpu() for a in self.group_alpha],
            "s": [t.detach().cpu() for t in self.s],
            "s_group": [t.detach().cpu() for t in getattr(self, "s_group", [])],
            "delta": self.delta.state_dict(),
            "finetune_mask": getattr(self, "finetune_mask", None),
        }

    def report(self) -> dict:
        body = sum(w.numel() for w in getattr(self, "w", []))
        elements = 2 * body + len(getattr(self, "group_alpha", [])) + self.stats.get("head_params", 0)  # w, α (+ α_g per tensor), head
        out = {
            "k": self.k,
            "density": self.k / self.stats["total_params"] if self.stats.get("total_params") else None,
            "target_density": self.cfg.density,
            "head_params": self.stats.get("head_params"),
            "optimizer_elements": elements,
            "optimizer_state_bytes_adamw": 2 * 4 * elements,
            "structured": bool(self.cfg.get("structured", True)),
        }
        out.update({k: v for k, v in self.stats.items() if k not in out and k != "total_params"})
        if hasattr(self.delta, "summary"):
            out.update(self.delta.summary)
        return out
