"""Low-rank maths shared by ERE and LRA: truncated SVD (exact or randomized), the rank allocation
of papers/ere.txt §4.1–4.2, and the projection onto the Stiefel manifold. Pure functions on
tensors: no models, no files.

Rank allocation (METHODS.md §5). Layer i (shape n_i × m_i, k_i = min(n_i, m_i)) at rank r has the
squared Frobenius error f_i(r) = Σ_{l>r} σ_{i,l}² and costs r·w_i (w_i = n_i + m_i numbers, or the
bytes one rank takes). Minimise Σ f_i(r_i) subject to Σ r_i w_i ≤ B:
  1. fit log f_i(r) ≈ a_i − b_i·r by least squares over r = 0..min(known, fit_upto) (ERE passes
     max(8, 2·r_avg): the ranks an allocation can plausibly reach, the same range whether the
     spectrum came from an exact or a randomized SVD; a fit over the whole spectrum is dominated
     by its long far tail, which the allocation never reaches), leaving out f below 1e-6·f(0)
     (round-off of fp32 singular values);
  2. relax r to reals: the Lagrangian's stationary point is
     r_i(λ) = clip((a_i + ln b_i − ln(λ·w_i)) / b_i, 0, k_i);
  3. bisect ln λ until Σ r_i(λ) w_i meets B (never above it);
  4. rank prior: r'_i = (1 − α) r_i + α r_avg with Σ r_avg w_i = B (a convex combination of two
     feasible points, so still within B), clipped to [0, k_i];
  5. round down, then hand the budget that rounding and clipping left over to the ranks with the
     largest error reduction per cost (σ_{r+1}² / w_i, from the spectrum where it is known, from
     the fit beyond), one rank at a time, only while it fits. The total never exceeds B.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import torch

RANDOMIZED_FACTOR = 8  # auto: randomized SVD when (rank + oversample) · 8 <= min(n, m) (bench/ere.py: on MiniLM
# shapes randomized is 2–10x faster at r = 8 and 32, and from 2x slower to 6x faster at r = 88)
SINGLE_POINT_SLOPE = math.log(1e6)  # a layer whose whole error goes at rank 1: f drops 1e6× per rank


# --- truncated SVD -------------------------------------------------------------------------------


def choose_svd(rank: int, n: int, m: int, mode: str = "auto", oversample: int = 8) -> str:
    """'exact' or 'randomized' for a rank-`rank` truncation of an n × m matrix."""
    if mode in ("exact", "randomized"):
        return mode
    if mode != "auto":
        raise ValueError(f"svd mode must be auto, exact or randomized, got {mode!r}")
    return "randomized" if (int(rank) + int(oversample)) * RANDOMIZED_FACTOR <= min(n, m) else "exact"


def truncated_svd(x: torch.Tensor, rank: int, mode: str = "auto", oversample: int = 8, niter: int = 4,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(U n×r, S r, V m×r, how) with x ≈ U diag(S) Vᵀ, r = min(rank, n, m); S descending.

    'randomized' is torch.svd_lowrank with q = rank + oversample and `niter` power iterations,
    seeded (`seed`) without touching the global random state; 'exact' is torch.linalg.svd."""
    n, m = x.shape
    k = min(n, m)
    r = max(0, min(int(rank), k))
    how = choose_svd(r, n, m, mode, oversample)
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if r == 0:
        return xf.new_zeros(n, 0), xf.new_zeros(0), xf.new_zeros(m, 0), how
    if how == "randomized":
        q = min(k, r + int(oversample))
        devices = [xf.device] if xf.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            u, s, v = torch.svd_lowrank(xf, q=q, niter=int(niter))
    else:
        u, s, vh = torch.linalg.svd(xf, full_matrices=False)
        v = vh.mH
    return u[:, :r], s[:r], v[:, :r], how


@dataclass
class Spectrum:
    """What the allocator needs of one layer, and the factors computed on the way."""

    sigma: torch.Tensor  # leading singular values, descending (float64, on CPU)
    total: float  # ‖Δ‖_F² (exact)
    dim: int  # k = min(n, m): the largest useful rank
    trusted: int  # how many leading values of `sigma` are accurate (all, for an exact SVD)
    how: str  # 'exact' | 'randomized'
    u: torch.Tensor | None = field(default=None, repr=False)  # the factors behind `sigma` (may be None)
    v: torch.Tensor | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        return self.trusted >= self.dim


def probe_spectrum(x: torch.Tensor, probe_rank: int, mode: str = "auto", oversample: int = 8, niter: int = 4,
                   seed: int = 0, keep: int | None = None) -> Spectrum:
    """The spectrum of `x` for the allocator: the whole spectrum by an exact SVD, or the leading
    `probe_rank` values by a randomized one (mode, or auto: randomized when probe_rank is far below
    min(n, m)). Keeps at most `keep` leading factors (None: all computed) for the encoder."""
    n, m = x.shape
    k = min(n, m)
    xf = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    total = float(torch.linalg.vector_norm(xf)) ** 2
    probe = max(1, min(int(probe_rank), k))
    how = choose_svd(probe, n, m, mode, oversample)
    if how == "exact":
        u, s, v, _ = truncated_svd(xf, k, "exact")
        trusted = k
    else:
        u, s, v, _ = truncated_svd(xf, probe + int(oversample), "randomized", 0, niter, seed)
        trusted = min(probe, s.numel())
    cut = s.numel() if keep is None else min(s.numel(), int(keep))
    return Spectrum(s.detach().double().cpu(), total, k, trusted, how, u[:, :cut], v[:, :cut])


def stiefel_project(x: torch.Tensor) -> torch.Tensor:
    """The nearest matrix with orthonormal columns (Frobenius): the polar factor A·Bᵀ of
    x = A·S·Bᵀ. For a tall n × r matrix the SVD is taken of R from x = Q·R (r × r), so
    A = Q·A_R: the same factor for the cost of a thin QR. Computed in float64, returned in x's dtype."""
    if x.ndim != 2 or x.shape[1] > x.shape[0]:
        raise ValueError(f"stiefel_project needs a tall matrix (n >= r), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        return x.clone()
    q, r = torch.linalg.qr(x.double())
    a, _, bh = torch.linalg.svd(r)
    return (q @ (a @ bh)).to(x.dtype)


# --- rank allocation -----------------------------------------------------------------------------


def tail_energy(sigma: torch.Tensor, total: float | None = None) -> torch.Tensor:
    """f(r) = Σ_{l>r} σ_l² for r = 0..len(sigma) (float64); `total` = ‖Δ‖_F² when sigma is only
    the leading part of the spectrum."""
    s2 = sigma.detach().double().cpu().pow(2)
    total = float(s2.sum()) if total is None else float(total)
    head = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s2, 0)])
    return (total - head).clamp_min(0.0)


def fit_log_linear(f: torch.Tensor) -> tuple[float, float]:
    """(a, b) with log f(r) ≈ a − b·r, least squares over the r where f(r) > 0 (relative to f(0)).
    b > 0 always; a layer with no error at all gives (-inf, inf)."""
    f = f.double()
    if f.numel() == 0 or float(f[0]) <= 0:
        return float("-inf"), float("inf")
    keep = f > float(f[0]) * 1e-6
    r = torch.arange(f.numel(), dtype=torch.float64)[keep]
    y = torch.log(f[keep])
    if r.numel() < 2:
        return float(y[0]), SINGLE_POINT_SLOPE
    rm, ym = r.mean(), y.mean()
    slope = float(((r - rm) * (y - ym)).sum() / (r - rm).pow(2).sum())
    b = max(-slope, 1e-9)
    return float(ym + b * rm), b


@dataclass
class Allocation:
    ranks: list[int]  # final integer ranks
    relaxed: list[float]  # the Lagrangian solution (step 3)
    mixed: list[float]  # after the rank prior (step 4)
    r_avg: float  # the uniform rank that spends the budget
    budget: float
    used: float  # Σ ranks · costs (<= budget)
    log_lambda: float
    fits: list[tuple[float, float]]  # (a, b) of log f_i(r) ≈ a − b r


def _relaxed(fits, costs, dims, log_lam) -> list[float]:
    out = []
    for (a, b), w, k in zip(fits, costs, dims):
        if not math.isfinite(a) or k == 0:
            out.append(0.0)
            continue
        r = (a + math.log(b) - log_lam - math.log(w)) / b
        out.append(min(max(r, 0.0), float(k)))
    return out


def allocate_ranks(spectra, budget: float, alpha: float = 0.5, costs=None, *, totals=None, dims=None,
                   trusted=None, fit_upto: int | None = None) -> Allocation:
    """Integer ranks r_i with Σ r_i·costs_i <= budget that approximately minimise Σ f_i(r_i)
    (module docstring). `spectra`: per layer the leading singular values (descending) — a
    `Spectrum` or a tensor; `costs`: per layer the cost of one rank (default 1: budget in ranks);
    `totals`: ‖Δ_i‖_F² when a spectrum is partial; `dims`: the largest rank per layer (default:
    the spectrum's length); `trusted`: how many leading values are accurate (default: all);
    `fit_upto`: the largest r of the log-linear fit (default: all that is known)."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    sigmas, n = [], len(spectra)
    totals = list(totals) if totals is not None else [None] * n
    dims = list(dims) if dims is not None else [None] * n
    trusted = list(trusted) if trusted is not None else [None] * n
    for i, s in enumerate(spectra):
        if isinstance(s, Spectrum):
            totals[i] = s.total if totals[i] is None else totals[i]
            dims[i] = s.dim if dims[i] is None else dims[i]
            trusted[i] = s.trusted if trusted[i] is None else trusted[i]
            s = s.sigma
        s = torch.as_tensor(s).detach().double().cpu()
        sigmas.append(s)
        dims[i] = int(s.numel() if dims[i] is None else dims[i])
        trusted[i] = int(min(s.numel(), s.numel() if trusted[i] is None else trusted[i]))
    costs = [1.0] * n if costs is None else [float(c) for c in costs]
    if any(c <= 0 for c in costs):
        raise ValueError("every cost per rank must be > 0")
    budget = float(budget)
    if budget < 0:
        raise ValueError(f"the budget must be >= 0, got {budget}")
    tails = [tail_energy(s[:t], tot) for s, t, tot in zip(sigmas, trusted, totals)]
    fits = [fit_log_linear(f if fit_upto is None else f[: int(fit_upto) + 1]) for f in tails]
    live = [math.isfinite(a) and k > 0 for (a, _), k in zip(fits, dims)]

    # steps 2–3: bisection on ln λ
    full = sum(w * k for w, k, ok in zip(costs, dims, live) if ok)
    if full <= budget:
        log_lam, relaxed = float("-inf"), [float(k) if ok else 0.0 for k, ok in zip(dims, live)]
    else:
        pts = [(a + math.log(b) - math.log(w), b * k) for (a, b), w, k, ok in zip(fits, costs, dims, live) if ok]
        hi = max(p for p, _ in pts) + 1.0  # every r_i = 0
        lo = min(p - bk for p, bk in pts) - 1.0  # every r_i = k_i
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            spent = sum(w * r for w, r in zip(costs, _relaxed(fits, costs, dims, mid)))
            if spent > budget:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-12:
                break
        log_lam, relaxed = hi, _relaxed(fits, costs, dims, hi)

    # step 4: rank prior
    r_avg = budget / sum(costs) if costs else 0.0
    mixed = [min(max((1 - alpha) * r + alpha * r_avg, 0.0), float(k)) if ok else 0.0
             for r, k, ok in zip(relaxed, dims, live)]

    # step 5: round down, then fill what is left greedily
    ranks = [int(math.floor(x)) for x in mixed]
    used = sum(r * w for r, w in zip(ranks, costs))
    while used > budget:  # float round-off guard: never over the budget
        i = max(range(n), key=lambda j: ranks[j] * costs[j])
        ranks[i] -= 1
        used -= costs[i]

    def gain(i: int, r: int) -> float:  # f_i(r) − f_i(r + 1)
        if r < trusted[i]:
            return float(sigmas[i][r]) ** 2
        a, b = fits[i]
        return math.exp(a - b * r) * (1.0 - math.exp(-b)) if math.isfinite(a) else 0.0

    heap = [(-gain(i, ranks[i]) / costs[i], i) for i in range(n) if live[i] and ranks[i] < dims[i]]
    heapq.heapify(heap)
    while heap:
        neg, i = heapq.heappop(heap)
        if -neg <= 0 or used + costs[i] > budget:
            continue
        ranks[i] += 1
        used += costs[i]
        if ranks[i] < dims[i]:
            heapq.heappush(heap, (-gain(i, ranks[i]) / costs[i], i))
    return Allocation(ranks, relaxed, mixed, r_avg, budget, used, log_lam, fits)


def squared_error(spectra, ranks, totals=None) -> float:
    """Σ_i f_i(r_i) from (complete) spectra: the allocator's objective."""
    out = 0.0
    for i, (s, r) in enumerate(zip(spectra, ranks)):
        s = s.sigma if isinstance(s, Spectrum) else s
        f = tail_energy(torch.as_tensor(s), None if totals is None else totals[i])
        out += float(f[min(int(r), f.numel() - 1)])
    return out
