"""BITQ — the quantisation-only baseline of papers/ere.txt §5.1: `job=compress method=bitq`.

Every entry of every matrix residual Δ = θ' − θ is quantised round-to-nearest at `bits`, with one
(offset, step) pair in fp16 per row or per column; no low-rank step. Like ERE, 1-D tensors that
changed and tensors with no pretrained counterpart are stored as they are, unchanged tensors not
at all (the three compressors differ only in how they code the matrices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...core.options import MethodOptions, option
from ..registry import register
from .quant import pack_bits, quantize
from .residual import Coded, Device, ResidualCompressor, device_option, progress


@dataclass
class BITQOptions(MethodOptions):
    bits: int = option(4, "b: bits per residual entry (round-to-nearest)", low=2, high=8)
    axis: Literal["row", "column"] = option("row", "one (offset, step) pair in fp16 per row or per column of each matrix")
    device: Device = device_option()


@register("bitq")
class BITQ(ResidualCompressor):
    """BITQ: every residual entry quantised at b bits, per-row or per-column scales (ERE's baseline)."""

    name = "bitq"
    Options = BITQOptions

    def encode(self, residuals, ctx) -> dict[str, Coded]:
        bits, axis = int(self.opts.bits), 0 if self.opts.axis == "row" else 1
        coded = {}
        for key in progress(residuals.keys, "bitq"):
            n, m = residuals.shape(key)
            q = quantize(residuals(key).cpu(), bits, axis=axis)
            t = residuals.tuned[key]
            entry = {"code": "quant", "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                     "matrix": [n, m], "bits": bits, "axis": axis}
            tensors = {"codes": pack_bits(q.codes, bits), "side": torch.stack([q.lo, q.step]).contiguous()}
            coded[key] = Coded(entry, tensors, {"shape": [n, m]})
        return coded
