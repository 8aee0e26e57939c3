"""ERE — efficient residual encoding (papers/ere.txt, METHODS.md §5): `job=compress method=ere`.

Every matrix residual Δ_i = θ'_i − θ_i is stored as U_i·diag(D_i)·V_iᵀ at the rank r_i that
`allocate_ranks` gives (the Lagrangian allocation over log-linear fits of each layer's tail energy,
homogenised by the rank prior α), U and V quantised round-to-nearest at `bits` with per-column
(offset, step) in fp16, D in fp16; decoding projects the dequantised U and V back onto orthonormal
columns (polar factor) before θ + U·D·Vᵀ. 1-D tensors that changed and tensors with no pretrained
counterpart are stored as they are.

Budget: `rank_prior` r gives M = Σ_i r·(n_i + m_i) stored numbers (the paper's; r = 0 is the report's
rank-0 control: every matrix residual dropped, the base θ plus the tensors stored as they are), or
`budget_fraction` f caps the artifact at f × the dense fp32 checkpoint (everything counted: the
tensors stored as they are, codes, scales, D and the header); exactly one of the two is set.

Spectra: the allocator needs each layer's spectrum. svd=exact takes it whole from one exact SVD
per matrix; svd=randomized (and auto, where the probe rank is far below the matrix size) takes the
leading max(8, 2·r_avg) singular values from torch.svd_lowrank and ‖Δ‖_F² exactly, so the tail
energy is exact up to the probe and the log-linear fit extrapolates beyond it (in both cases the
fit uses r <= the probe rank, so both give nearly the same allocation); a layer allocated
more than the probe gets its factors from a second SVD at its rank.

Project decisions (METHODS.md §5 leaves these open): scales are min–max (asymmetric, all 2^b
levels); rounding the relaxed ranks down leaves budget over, which goes to the ranks with the
largest σ²/cost, one at a time (never over the budget); tensors with more than two dimensions
(convolutions) are coded as (out, in·kh·kw) matrices; embeddings are coded like any matrix.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass

import torch

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..registry import register
from .lowrank import Allocation, allocate_ranks, probe_spectrum, tail_energy, truncated_svd
from .quant import pack_bits, packed_nbytes, quantize, side_dtype
from .residual import (Coded, Device, ResidualCompressor, SVDMode, device_option, header_entry_bytes, niter_option,
                       oversample_option, progress, seed_option, svd_option)

SIDE_ROWS = 5  # U lo, U step, V lo, V step, D: one value each per rank
PROBE_FACTOR = 2  # randomized spectra: probe max(MIN_PROBE, 2·r_avg) singular values
MIN_PROBE = 8


@dataclass
class EREOptions(MethodOptions):
    rank_prior: int | None = option(256, "r: the budget M = Σ_i r·(n_i + m_i) stored numbers (the paper's r; its "
                                         "headline is r=256, b=4 on RoBERTa-large); 0 = the rank-0 control (no low-rank residual: θ plus the tensors stored "
                                         "as they are). null to use budget_fraction", low=0)
    budget_fraction: float | None = option(None, "cap the artifact at this fraction of the dense fp32 checkpoint's bytes "
                                                 "(everything counted); set rank_prior=null to use it", low=0, low_open=True, high=1)
    alpha: float = option(0.5, "rank prior: r'_i = (1 − α)·r_i + α·r_avg (0 = pure allocation, 1 = uniform ranks)", low=0, high=1)
    bits: int = option(4, "b: bits per entry of U and V (round-to-nearest, per-column scales); D is fp16", low=2, high=8)
    stiefel: bool = option(True, "project the dequantised U and V onto orthonormal columns before reconstructing (§4.2)")
    svd: SVDMode = svd_option()
    svd_oversample: int = oversample_option()
    svd_niter: int = niter_option()
    seed: int = seed_option()
    device: Device = device_option()

    def check(self) -> None:
        if self.rank_prior is None and self.budget_fraction is None:
            raise ConfigError("method.rank_prior", "set a budget: method.rank_prior=<r> (M = Σ r·(n_i + m_i) numbers) "
                                                   "or method.rank_prior=null method.budget_fraction=<f>")
        if self.rank_prior is not None and self.budget_fraction is not None:
            raise ConfigError("method.budget_fraction", f"{self.budget_fraction} and method.rank_prior={self.rank_prior} are "
                                                        "both set; give one budget (method.rank_prior=null to use budget_fraction)")


@dataclass
class EncodedLayer:
    key: str
    n: int
    m: int
    bits: int
    u_codes: torch.Tensor  # (n, r) uint8
    v_codes: torch.Tensor  # (m, r) uint8
    side: torch.Tensor  # (5, r): U lo, U step, V lo, V step, D
    rank: int

    def rank_bytes(self) -> float:
        return (self.n + self.m) * self.bits / 8 + SIDE_ROWS * self.side.element_size()

    def coded(self, report: dict) -> Coded:
        r = self.rank
        entry = {"code": "lowrank_q", "shape": None, "dtype": None, "matrix": [self.n, self.m], "rank": r,
                 "bits": self.bits, "stiefel": True}
        tensors = {}
        if r:
            codes = torch.cat([self.u_codes[:, :r].reshape(-1), self.v_codes[:, :r].reshape(-1)])
            tensors = {"codes": pack_bits(codes, self.bits), "side": self.side[:, :r].contiguous()}
        return Coded(entry, tensors, {**report, "rank": r})


@register("ere")
class ERE(ResidualCompressor):
    """ERE: low-rank residuals at allocated ranks, U and V quantised, D fp16 (papers/ere.txt)."""

    name = "ere"
    Options = EREOptions

    def budget_bytes(self, ctx) -> float | None:
        if self.opts.budget_fraction is None:
            return None
        return self.opts.budget_fraction * ctx.dense_bytes

    def encode(self, residuals, ctx) -> dict[str, Coded]:
        o = self.opts
        keys = residuals.keys
        self._residuals, self._layers, self._reports = residuals, {}, {}
        shapes = [residuals.shape(k) for k in keys]
        bits = int(o.bits)
        side_bytes = SIDE_ROWS * 2
        if o.rank_prior is not None:
            costs = [float(n + m) for n, m in shapes]
            budget = float(o.rank_prior) * sum(costs)
            unit = "numbers"
        else:
            costs = [(n + m) * bits / 8 + side_bytes for n, m in shapes]
            overhead = ctx.raw_bytes + ctx.header_bytes + len(keys)  # +1 byte per layer: packing rounds up
            for key, (n, m) in zip(keys, shapes):
                entry = {"code": "lowrank_q", "shape": [n, m], "dtype": "float32", "matrix": [n, m], "rank": 999999,
                         "bits": bits, "stiefel": True}
                overhead += len(json.dumps({key: entry}, separators=(",", ":"))) + 2 * header_entry_bytes(key + "::codes")
            allowed = o.budget_fraction * ctx.dense_bytes
            budget = allowed - overhead
            unit = "bytes"
            if budget < 0:
                raise ConfigError("method.budget_fraction", f"{o.budget_fraction} of the dense fp32 checkpoint "
                                  f"({ctx.dense_bytes} bytes) is {allowed:.0f} bytes, less than the tensors stored as they "
                                  f"are and the header need ({overhead} bytes = {overhead / ctx.dense_bytes:.4f}); raise it")
        r_avg = budget / sum(costs) if costs else 0.0
        self._budget = {"mode": "rank_prior" if o.rank_prior is not None else "budget_fraction",
                        "value": o.rank_prior if o.rank_prior is not None else o.budget_fraction,
                        "unit": unit, "budget": budget, "r_avg": r_avg, "alpha": o.alpha, "bits": bits}

        probe = max(MIN_PROBE, math.ceil(PROBE_FACTOR * r_avg))
        spectra = []
        for key, (n, m), w in progress(list(zip(keys, shapes, costs)), "ere: spectra"):
            keep = min(n, m, int(budget // w) if w > 0 else 0)
            spectra.append(probe_spectrum(residuals(key), probe, o.svd, o.svd_oversample, o.svd_niter, o.seed, keep=keep))
        alloc = allocate_ranks(spectra, budget, o.alpha, costs, fit_upto=probe)
        self._alloc = alloc
        self._budget["used"] = alloc.used

        coded: dict[str, Coded] = {}
        for i, key in enumerate(progress(keys, "ere: encode")):
            (n, m), spec, r = shapes[i], spectra[i], alloc.ranks[i]
            how = spec.how
            if r == 0:
                u, s, v = torch.zeros(n, 0), torch.zeros(0), torch.zeros(m, 0)
            elif spec.u is not None and r <= spec.trusted and spec.u.shape[1] >= r:
                u, s, v = spec.u[:, :r], spec.sigma[:r], spec.v[:, :r]
            else:
                u, s, v, how = truncated_svd(residuals(key), r, o.svd, o.svd_oversample, o.svd_niter, o.seed)
            spectra[i] = None  # free the factors
            qu, qv = quantize(u.float().cpu(), bits, axis=1), quantize(v.float().cpu(), bits, axis=1)
            d = s.float().cpu()
            dtype = side_dtype(qu.lo.float(), qu.step.float(), qv.lo.float(), qv.step.float(), d)
            side = torch.stack([qu.lo.float(), qu.step.float(), qv.lo.float(), qv.step.float(), d]).to(dtype)
            layer = EncodedLayer(key, n, m, bits, qu.codes, qv.codes, side, r)
            f = tail_energy(spec.sigma[: spec.trusted], spec.total)
            self._reports[key] = {
                "shape": [n, m], "relaxed_rank": round(alloc.relaxed[i], 3), "mixed_rank": round(alloc.mixed[i], 3),
                "svd": how, "spectrum": "exact" if spec.complete else f"leading {spec.trusted}",
                "optimal_rel_error": math.sqrt(float(f[r]) / spec.total) if r < f.numel() and spec.total > 0 else None,
            }
            self._layers[key] = layer
            coded[key] = self._coded(layer)
        return coded

    def _coded(self, layer: EncodedLayer) -> Coded:
        c = layer.coded(self._reports[layer.key])
        t = self._residuals.tuned[layer.key]
        c.entry["shape"], c.entry["dtype"] = list(t.shape), str(t.dtype).replace("torch.", "")
        c.entry["stiefel"] = bool(self.opts.stiefel)
        return c

    def trim(self, coded: dict[str, Coded], excess: int) -> None:
        """Drop the ranks that lose the least squared error per byte (σ² from D) until `excess`
        bytes are saved. Per-column scales make the first r − 1 columns' codes the same as before."""
        heap = []
        for key, layer in self._layers.items():
            if layer.rank:
                sigma = float(layer.side[4, layer.rank - 1])
                heapq.heappush(heap, (sigma * sigma / layer.rank_bytes(), key))
        saved, touched = 0.0, set()
        while heap and saved < excess + 8:
            _, key = heapq.heappop(heap)
            layer = self._layers[key]
            saved += layer.rank_bytes() + 1
            layer.rank -= 1
            self._budget["used"] -= self._alloc_cost(layer)
            touched.add(key)
            if layer.rank:
                sigma = float(layer.side[4, layer.rank - 1])
                heapq.heappush(heap, (sigma * sigma / layer.rank_bytes(), key))
        for key in touched:
            coded[key] = self._coded(self._layers[key])

    def _alloc_cost(self, layer: EncodedLayer) -> float:
        if self.opts.rank_prior is not None:
            return float(layer.n + layer.m)
        return (layer.n + layer.m) * layer.bits / 8 + SIDE_ROWS * 2

    def extra_report(self) -> dict:
        ranks = {k: layer.rank for k, layer in getattr(self, "_layers", {}).items()}
        return {"budget": getattr(self, "_budget", None), "ranks": ranks,
                "mean_rank": sum(ranks.values()) / len(ranks) if ranks else 0.0}
