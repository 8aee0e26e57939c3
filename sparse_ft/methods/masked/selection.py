"""Masks: ``{parameter name: sorted int64 flat indices}`` — choosing k entries (top-k, random,
whole tensors) and the mask file (save, load with shape checks)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ...core.errors import ConfigError

log = logging.getLogger(__name__)

MASK_FILE = "mask.safetensors"
DELTA_FILE = "delta.safetensors"
BASE_FILE = "delta_base.safetensors"
DELTA_FORMAT = "sparse-ft-delta/1"
MASK_FORMAT = "sparse-ft-mask/1"


# --- parameters ------------------------------------------------------------------------------------


def named_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """Unique parameters (tied ones once, under their first name), in module order."""
    return dict(module.named_parameters())


def budget(total: int, density: float) -> int:
    """k = round(density · |θ|), at least 1."""
    return max(1, min(total, int(round(density * total))))


def mask_size(mask: dict[str, torch.Tensor]) -> int:
    return sum(int(i.numel()) for i in mask.values())


def full_mask(module: nn.Module, names) -> dict[str, torch.Tensor]:
    params = named_params(module)
    return {n: torch.arange(params[n].numel()) for n in names}


# --- selecting k entries --------------------------------------------------------------------------


def topk_mask(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The k largest scores over all tensors, exactly k: ties at the threshold are broken by
    position (tensor order of `scores`, then flat index), so the mask is deterministic."""
    total = sum(s.numel() for s in scores.values())
    if k <= 0 or not scores:
        return {n: torch.zeros(0, dtype=torch.long) for n in scores}
    if k > total:
        raise ValueError(f"cannot pick {k} entries out of {total}")
    flat = {}
    for n, s in scores.items():
        s = s.detach().reshape(-1).float()
        if torch.isnan(s).any():
            raise FloatingPointError(f"the scores of {n} contain NaN")
        flat[n] = s
    candidates = torch.cat([s.topk(min(k, s.numel())).values.cpu() for s in flat.values() if s.numel()])
    tau = candidates.topk(k).values[-1]
    above = sum(int((s > tau.to(s.device)).sum()) for s in flat.values())
    ties_left = k - above
    mask = {}
    for n, s in flat.items():
        t = tau.to(s.device)
        idx = (s > t).nonzero().view(-1)
        if ties_left > 0:
            eq = (s == t).nonzero().view(-1)[:ties_left]
            ties_left -= eq.numel()
            idx = torch.cat([idx, eq]).sort().values
        mask[n] = idx.cpu()
    assert mask_size(mask) == k
    return mask


def random_mask(numels: dict[str, int], k: int, seed: int) -> dict[str, torch.Tensor]:
    """k entries drawn uniformly without replacement over all tensors, from a seeded generator."""
    total = sum(numels.values())
    if k > total:
        raise ValueError(f"cannot pick {k} entries out of {total}")
    g = torch.Generator().manual_seed(int(seed))
    if k * 2 > total:
        chosen = torch.randperm(total, generator=g)[:k]
    else:  # draw with replacement, keep first occurrences in draw order until k distinct
        drawn = torch.empty(0, dtype=torch.long)
        chosen = drawn
        while chosen.numel() < k:
            extra = max(16, int((k - chosen.numel()) * 1.1) + 16)
            drawn = torch.cat([drawn, torch.randint(total, (extra,), generator=g)])
            uniq, inverse = torch.unique(drawn, return_inverse=True)
            first = torch.full((uniq.numel(),), drawn.numel(), dtype=torch.long).scatter_reduce_(
                0, inverse, torch.arange(drawn.numel()), reduce="amin"
            )
            chosen = uniq[first.argsort()]
        chosen = chosen[:k]
    chosen = chosen.sort().values
    mask, offset = {}, 0
    for n, size in numels.items():
        lo = torch.searchsorted(chosen, offset)
        hi = torch.searchsorted(chosen, offset + size)
        mask[n] = chosen[lo:hi] - offset
        offset += size
    return mask


# --- mask files -----------------------------------------------------------------------------------


def save_mask(path: Path, module: nn.Module, mask: dict[str, torch.Tensor], info: dict) -> int:
    from ...core.io import save_tensors

    shapes = {n: list(p.shape) for n, p in named_params(module).items()}
    meta = {"format": MASK_FORMAT, "shapes": json.dumps(shapes), "info": json.dumps(info)}
    return save_tensors({n: i.to(torch.int32) for n, i in mask.items() if i.numel()}, path, meta)


def load_mask(path, module: nn.Module, skip=()) -> dict[str, torch.Tensor]:
    """Read a mask saved by `save_mask` (a file, or a run directory holding mask.safetensors) and
    check it against this model: every tensor must exist with the same shape."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / MASK_FILE
    if not path.is_file():
        raise ConfigError("method.mask_path", f"{path}: no such mask file")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MASK_FORMAT:
            raise ConfigError("method.mask_path", f"{path}: not a sparse-ft mask file (format {meta.get('format')!r})")
        stored = {k: f.get_tensor(k) for k in f.keys()}
    shapes = json.loads(meta["shapes"])
    params = named_params(module)
    skip = set(skip)
    for n, shape in shapes.items():
        if n in skip:
            continue
        if n not in params:
            raise ConfigError("method.mask_path", f"{path}: the mask has tensor {n!r}, which this model does not have (a mask for another model?)")
        if list(params[n].shape) != list(shape):
            raise ConfigError(
                "method.mask_path", f"{path}: tensor {n!r} has shape {list(shape)} in the mask but {list(params[n].shape)} in this model (a mask for another model?)"
            )
    for n in params:
        if n not in shapes and n not in skip:
            raise ConfigError("method.mask_path", f"{path}: the mask has no entry for this model's tensor {n!r} (a mask for another model?)")
    mask = {}
    for n, p in params.items():
        if n in skip:
            continue
        idx = stored.get(n, torch.zeros(0, dtype=torch.int32)).long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= p.numel()):
            raise ConfigError("method.mask_path", f"{path}: indices of {n!r} out of range")
        mask[n] = idx.unique()
    return mask


# --- the optimizer sees only the masked entries ---------------------------------------------------


def mask_by_type(mask: dict[str, torch.Tensor]) -> dict[str, int]:
    """Where a mask lands: masked entries per parameter type (layer indices as `*`), largest first."""
    import re

    counts: dict[str, int] = {}
    for name, idx in mask.items():
        if idx.numel():
            key = re.sub(r"\.\d+\.", ".*.", name)
            counts[key] = counts.get(key, 0) + int(idx.numel())
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
