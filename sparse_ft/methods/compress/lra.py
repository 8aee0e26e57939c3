"""LRA — the low-rank-only baseline of papers/ere.txt §5.1: `job=compress method=lra`.

Every matrix residual Δ = θ' − θ is stored as its truncated SVD U·diag(S)·Vᵀ at one rank for
every layer (min(rank, n, m)), no allocation and no quantisation: U, S, V in `dtype`. 1-D tensors
that changed and new heads are stored as they are, as in ERE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...core.options import MethodOptions, option
from ..registry import register
from .lowrank import truncated_svd
from .quant import FP16_MAX
from .residual import (Coded, Device, ResidualCompressor, SVDMode, device_option, niter_option, oversample_option,
                       progress, seed_option, svd_option)


@dataclass
class LRAOptions(MethodOptions):
    rank: int = option(256, "r: the same rank for every matrix (capped at min(n, m))", low=0, low_open=True)
    dtype: Literal["float16", "float32"] = option("float16", "storage dtype of U, S and V (S falls back to float32 "
                                                             "where float16 would overflow)")
    svd: SVDMode = svd_option()
    svd_oversample: int = oversample_option()
    svd_niter: int = niter_option()
    seed: int = seed_option()
    device: Device = device_option()


@register("lra")
class LRA(ResidualCompressor):
    """LRA: truncated SVD of every residual at one rank, fp16/fp32 factors (ERE's baseline)."""

    name = "lra"
    Options = LRAOptions

    def encode(self, residuals, ctx) -> dict[str, Coded]:
        o = self.opts
        dtype = getattr(torch, o.dtype)
        coded = {}
        for key in progress(residuals.keys, "lra"):
            n, m = residuals.shape(key)
            u, s, v, how = truncated_svd(residuals(key), o.rank, o.svd, o.svd_oversample, o.svd_niter, o.seed)
            r = s.numel()
            s_dtype = dtype if dtype != torch.float16 or (s.numel() == 0 or float(s.abs().max()) < FP16_MAX * 0.99) else torch.float32
            t = residuals.tuned[key]
            entry = {"code": "lowrank", "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                     "matrix": [n, m], "rank": r}
            tensors = {"u": u.cpu().to(dtype).contiguous(), "s": s.cpu().to(s_dtype).contiguous(),
                       "v": v.cpu().to(dtype).contiguous()} if r else {}
            coded[key] = Coded(entry, tensors, {"shape": [n, m], "rank": r, "svd": how})
        return coded
