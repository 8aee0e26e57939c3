"""Masked weight gradients for nn.Linear: compute only the k masked entries of ∂L/∂W.

A dense step spends about a third of its FLOPs on weight gradients (Gᵀ·X, a full GEMM per
Linear). Under a sparse mask only the masked entries are used, so each is one dot product of a
column of G (the output gradient) with a column of X (the input), over the batch's tokens:

    ∂L/∂W[r, c] = Σ_n G[n, r] · X[n, c]        for every masked (r, c)

`MaskedLinearGrad` is the autograd function: forward is the ordinary linear map (the weight holds
the current values), backward returns the input gradient as usual, no gradient for the weight,
and the masked entries' gradients straight into the slice of the flat optimizer vector that owns
them (gathered and dotted in chunks, so memory stays bounded, and summed in float64). The result
equals the masked dense gradient up to rounding, and is closer to the exact value than fp32 GEMM's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 1 << 24  # N·c floats per gather chunk (64 MiB per operand)


def sampled_weight_grad(g: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(Gᵀ·X)[rows, cols] without forming Gᵀ·X: g (N, out), x (N, in) → (k,)."""
    n = g.shape[0]
    out = torch.empty(rows.numel(), dtype=g.dtype, device=g.device)
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    for s in range(0, rows.numel(), step):
        e = min(s + step, rows.numel())
        # summed in float64: a masked entry's gradient is often a sum of many cancelling terms
        out[s:e] = torch.sum(g.index_select(1, rows[s:e]) * x.index_select(1, cols[s:e]), dim=0, dtype=torch.float64)
    return out


class MaskedLinearGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, values, rows, cols):
        ctx.save_for_backward(x, weight, rows, cols)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, rows, cols = ctx.saved_tensors
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_bias = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_values = sampled_weight_grad(g2, x.reshape(-1, x.shape[-1]), rows, cols) if ctx.needs_input_grad[3] else None
        return grad_x, None, grad_bias, grad_values, None, None


class MaskedLinears:
    """Installs masked-gradient forwards on the Linear layers whose weight is partly masked.

    `segments`: (parameter name, flat parameter, offset, indices) for every weight whose masked
    entries live in a flat optimizer vector. The weight keeps requires_grad=False, so autograd
    never computes its dense gradient; the slice of the flat vector receives the masked ones.
    """

    def __init__(self, module: nn.Module, segments: list[tuple[str, nn.Parameter, int, torch.Tensor]]):
        linears = {f"{name}.weight": m for name, m in module.named_modules() if type(m) is nn.Linear}
        self.installed: list[nn.Linear] = []
        self.names: set[str] = set()
        for name, flat, off, idx in segments:
            layer = linears.get(name)
            if layer is None:
                continue
            in_features = layer.weight.shape[1]
            rows, cols = idx // in_features, idx % in_features
            layer.forward = _forward(layer, flat, off, idx.numel(), rows, cols)
            self.installed.append(layer)
            self.names.add(name)

    def remove(self) -> None:
        for layer in self.installed:
            del layer.forward  # back to nn.Linear.forward
        self.installed, self.names = [], set()


def _forward(layer: nn.Linear, flat: nn.Parameter, off: int, n: int, rows: torch.Tensor, cols: torch.Tensor):
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, layer.weight, layer.bias)
        return MaskedLinearGrad.apply(x, layer.weight, layer.bias, flat[off : off + n], rows, cols)

    return forward
