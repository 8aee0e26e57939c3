"""Exact sparse updates over a fixed mask — the machinery fish, random_mask and bitfit share.

A mask is ``{parameter name: sorted int64 flat indices}``. ``SparseUpdate`` makes the optimizer
see only the masked entries:

* a tensor without masked entries gets ``requires_grad=False`` (backward skips its weight grad);
* a tensor masked in full is handed to the optimizer as it is (e.g. the new classifier head);
* the masked entries of the other tensors live in two flat ``nn.Parameter`` vectors (weight-decay
  and no-decay groups, Hugging Face's convention). ``after_backward`` gathers
  ``p.grad.view(-1)[idx]`` into the flat gradients, the optimizer updates the flat vectors, and
  ``after_step`` scatters them back into the parameters.

So no weight decay, momentum or Adam state ever touches an entry outside the mask — those stay
bit-identical to the initial weights — and optimizer state scales with k, not |θ|.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..base import NO_DECAY
from .selection import mask_size, named_params

log = logging.getLogger(__name__)


def is_no_decay(name: str, p: torch.Tensor) -> bool:
    return any(t in name for t in NO_DECAY) or p.ndim < 2


class SparseUpdate:
    """Flat optimizer vectors over the masked entries; see the module docstring."""

    def __init__(self, module: nn.Module, mask: dict[str, torch.Tensor], sampled_linear_grads: bool = False):
        self.module = module
        self.mask = mask
        self.whole: dict[bool, list[nn.Parameter]] = {True: [], False: []}
        self.segments: dict[bool, list] = {True: [], False: []}
        for name, p in named_params(module).items():
            idx = mask.get(name)
            if idx is None or idx.numel() == 0:
                p.requires_grad_(False)
                continue
            p.requires_grad_(True)
            decay = not is_no_decay(name, p)
            if idx.numel() == p.numel():
                self.whole[decay].append(p)
                continue
            if not p.is_contiguous():
                raise RuntimeError(f"{name}: sparse updates need contiguous parameters")
            self.segments[decay].append((name, p, idx.to(p.device)))
        self.flat: dict[bool, nn.Parameter | None] = {}
        self.offsets: dict[bool, list[int]] = {}
        for decay, segs in self.segments.items():
            if not segs:
                self.flat[decay] = None
                continue
            with torch.no_grad():
                values = torch.cat([p.view(-1)[idx] for _, p, idx in segs])
            self.flat[decay] = nn.Parameter(values)
            offs, o = [], 0
            for _, _, idx in segs:
                offs.append(o)
                o += idx.numel()
            self.offsets[decay] = offs
        # partly masked Linear weights: only their masked gradient entries are computed (sampled_grads.py)
        self.linears = None
        if sampled_linear_grads:
            from .sampled_grads import MaskedLinears

            segments = [(name, self.flat[d], off, idx) for d in (True, False) for (name, _, idx), off in zip(self.segments[d], self.offsets.get(d, []))]
            self.linears = MaskedLinears(module, segments)
            for layer in self.linears.installed:
                layer.weight.requires_grad_(False)

    def carry_state(self, previous: "SparseUpdate", old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
        """Optimizer state from `previous`'s layout into this one's: an entry selected in both keeps
        its moments (remapped to its new flat position), a new entry starts at zero; whole tensors
        seen by both keep their state as it is."""
        for decay in (True, False):
            for p in self.whole[decay]:
                if p in old.state:
                    new.state[p] = old.state[p]
            flat, before = self.flat[decay], previous.flat.get(decay)
            if flat is None or before is None or before not in old.state:
                continue
            old_state = old.state[before]
            where = {name: (idx, off) for (name, _, idx), off in zip(previous.segments[decay], previous.offsets[decay])}
            state = {k: (torch.zeros_like(flat.data) if torch.is_tensor(v) and v.shape == before.shape else (v.clone() if torch.is_tensor(v) else v))
                     for k, v in old_state.items()}
            for (name, _, idx), off in zip(self.segments[decay], self.offsets[decay]):
                if name not in where:
                    continue
                old_idx, old_off = where[name]
                pos = torch.searchsorted(old_idx, idx).clamp_(max=max(old_idx.numel() - 1, 0))
                kept = (old_idx[pos] == idx) if old_idx.numel() else torch.zeros_like(idx, dtype=torch.bool)
                for k, v in old_state.items():
                    if torch.is_tensor(v) and v.shape == before.shape:
                        state[k][off + kept.nonzero().view(-1)] = v[old_off + pos[kept]]
            new.state[flat] = state

    def close(self) -> None:
        """Give the Linear layers their own forward back (before the mask changes)."""
        if self.linears is not None:
            self.linears.remove()
            self.linears = None

    @property
    def size(self) -> int:
        return mask_size(self.mask)

    def optimizer_params(self) -> list[nn.Parameter]:
        return [p for d in (True, False) for p in ([self.flat[d]] if self.flat[d] is not None else []) + self.whole[d]]

    def param_groups(self, weight_decay: float) -> list[dict]:
        groups = []
        for decay in (True, False):
            params = ([self.flat[decay]] if self.flat[decay] is not None else []) + self.whole[decay]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0})
        return groups

    def gather_grads(self) -> None:
        for decay, segs in self.segments.items():
            flat = self.flat[decay]
            if flat is None:
                continue
            grad = flat.grad if flat.grad is not None else torch.zeros_like(flat)
            sampled = self.linears.names if self.linears is not None else ()
            for (name, p, idx), off in zip(segs, self.offsets[decay]):
                if name in sampled:  # autograd already put these entries' gradients into flat.grad
                    continue
                out = grad[off : off + idx.numel()]
                if p.grad is None:
                    out.zero_()
                else:
                    torch.index_select(p.grad.view(-1), 0, idx, out=out)
            flat.grad = grad

    @torch.no_grad()
    def scatter(self) -> None:
        for decay, segs in self.segments.items():
            flat = self.flat[decay]
            if flat is None:
                continue
            for (_, p, idx), off in zip(segs, self.offsets[decay]):
                p.view(-1).index_copy_(0, idx, flat.data[off : off + idx.numel()])

    @torch.no_grad()
    def sync_from_module(self) -> None:
        """Re-read the flat values from the parameters (after the weights were loaded)."""
        for decay, segs in self.segments.items():
            flat = self.flat[decay]
            if flat is not None:
                for (_, p, idx), off in zip(segs, self.offsets[decay]):
                    flat.data[off : off + idx.numel()] = p.view(-1)[idx]


# --- the sparse fine-tuned checkpoint -------------------------------------------------------------
