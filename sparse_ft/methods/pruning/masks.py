"""Pruning masks: ``{weight name: bool tensor of the weight's shape}``, True = kept.

* choosing: prune the entries with the lowest score, exactly ``round(s·n)`` of them per tensor
  (`scope=layer`) or over all prunable tensors together (`scope=global`); ties at the threshold
  are broken by position (tensor order, then flat index), so a mask is deterministic;
* N:M: in every group of M consecutive weights along the input dimension keep the N highest
  scores (Linear: along a row; Conv2d: along the input channels of one kernel position, NVIDIA
  ASP's layout);
* storing: `prune_mask.safetensors` (the masks as packed bits) and the compact weights
  `sparse_weights.safetensors` (per pruned tensor a bitmask + the kept values, the rest dense),
  both exact: `load_compact` gives back the final checkpoint bit for bit;
* measuring: the fraction of exact zeros per tensor and overall, from the weights themselves.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from ...core.errors import ConfigError

MASK_FILE = "prune_mask.safetensors"
COMPACT_FILE = "sparse_weights.safetensors"
MASK_FORMAT = "sparse-ft-prune-mask/1"
COMPACT_FORMAT = "sparse-ft-sparse-weights/1"


# --- choosing ----------------------------------------------------------------------------------


def n_pruned(numel: int, sparsity: float) -> int:
    """Entries to prune for a sparsity: round(s·n)."""
    return min(int(numel), max(0, int(round(float(sparsity) * numel))))


def prune_lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Keep-mask (flat) pruning exactly the `n` lowest scores; ties by position."""
    flat = scores.detach().reshape(-1).float()
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n <= 0:
        return keep
    if n >= flat.numel():
        return keep.zero_()
    if torch.isnan(flat).any():
        raise FloatingPointError("pruning scores contain NaN")
    thr = flat.kthvalue(n).values
    below = flat < thr
    left = n - int(below.sum())
    keep &= ~below
    if left > 0:
        eq = (flat == thr).nonzero().view(-1)[:left]
        keep[eq] = False
    return keep


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """`unstructured` → None; `N:M` → (N, M) with 1 <= N <= M (else ConfigError on method.pattern)."""
    if pattern == "unstructured":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not m:
        raise ConfigError("method.pattern", f"{pattern!r} is neither 'unstructured' nor N:M (e.g. 2:4, 4:8)")
    n, mm = int(m.group(1)), int(m.group(2))
    if mm < 1 or n < 1:
        raise ConfigError("method.pattern", f"{pattern!r}: N and M must be >= 1")
    if n > mm:
        raise ConfigError("method.pattern", f"{pattern!r}: N={n} is larger than M={mm} (keep N of every M)")
    return n, mm


def _rows(t: torch.Tensor) -> torch.Tensor:
    """The weight with its input dimension last: Linear (out, in); Conv2d (out·kh·kw, in)."""
    if t.ndim == 4:
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return t.reshape(t.shape[0], -1)


def _unrows(rows: torch.Tensor, shape) -> torch.Tensor:
    if len(shape) == 4:
        o, i, kh, kw = shape
        return rows.reshape(o, kh, kw, i).permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape)


def input_dim(shape) -> int:
    return int(shape[1]) if len(shape) >= 2 else int(shape[0])


def check_nm(shapes: dict[str, tuple], nm: tuple[int, int], pattern: str) -> None:
    _, m = nm
    for name, shape in shapes.items():
        if input_dim(shape) % m:
            raise ConfigError("method.pattern", f"{pattern}: M={m} does not divide the input dimension {input_dim(shape)} of {name} {list(shape)}")


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask of the scores' shape: the N highest of every M consecutive inputs (ties: first)."""
    rows = _rows(scores.detach().float())
    groups = rows.reshape(rows.shape[0], -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return _unrows(keep.reshape(rows.shape), scores.shape)


def select(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global", nm: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the lowest scores (see the module docstring)."""
    if nm is not None:
        return {name: nm_keep(s, *nm) for name, s in scores.items()}
    if scope == "layer":
        return {name: prune_lowest(s, n_pruned(s.numel(), sparsity)).view(s.shape) for name, s in scores.items()}
    if not scores:
        return {}
    device = next(iter(scores.values())).device
    flat = torch.cat([s.detach().reshape(-1).float().to(device) for s in scores.values()])
    keep = prune_lowest(flat, n_pruned(flat.numel(), sparsity))
    out, offset = {}, 0
    for name, s in scores.items():
        out[name] = keep[offset : offset + s.numel()].view(s.shape).to(s.device)
        offset += s.numel()
    return out


def pruned_count(keep: dict[str, torch.Tensor]) -> int:
    return sum(int((~k).sum()) for k in keep.values())


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine similarity of two binary keep-masks (the Essential Sparsity paper's mask similarity)."""
    inter = sum(int((a[n] & b[n].to(a[n].device)).sum()) for n in a)
    na, nb = sum(int(a[n].sum()) for n in a), sum(int(b[n].sum()) for n in b)
    return inter / math.sqrt(na * nb) if na and nb else 0.0


# --- bits --------------------------------------------------------------------------------------

_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


def pack(keep: torch.Tensor) -> torch.Tensor:
    """A bool tensor as packed bits (uint8, most significant bit first, like numpy.packbits)."""
    flat = keep.detach().reshape(-1).to("cpu", torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.uint8)])
    return (flat.view(-1, 8) << _SHIFTS).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    numel = math.prod(shape)
    flat = ((bits.to("cpu", torch.uint8).view(-1, 1) >> _SHIFTS) & 1).view(-1)[:numel]
    return flat.to(torch.bool).view(*shape)


def pack_state(keep: dict[str, torch.Tensor]) -> dict:
    """Masks for a method's state_dict (a checkpoint): packed bits + shapes."""
    return {"bits": {n: pack(k) for n, k in keep.items()}, "shapes": {n: list(k.shape) for n, k in keep.items()}}


def unpack_state(state: dict, device=None) -> dict[str, torch.Tensor]:
    return {n: unpack(b, state["shapes"][n]).to(device or "cpu") for n, b in state["bits"].items()}


# --- files -------------------------------------------------------------------------------------


def save_masks(path: Path, keep: dict[str, torch.Tensor], info: dict | None = None) -> int:
    """`prune_mask.safetensors`: one packed-bit tensor per pruned weight, shapes in the metadata."""
    from ...core.io import save_tensors

    meta = {"format": MASK_FORMAT, "shapes": json.dumps({n: list(k.shape) for n, k in keep.items()}), "info": json.dumps(info or {})}
    return save_tensors({n: pack(k) for n, k in keep.items()}, Path(path), meta)


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MASK_FORMAT:
            raise ValueError(f"{path}: not a pruning mask file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        return {n: unpack(f.get_tensor(n), shapes[n]) for n in f.keys()}


def save_compact(path: Path, weights: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], info: dict | None = None) -> int:
    """The final weights in compact form: for every pruned tensor `<name>::bits` (the keep-mask,
    packed) and `<name>::values` (the kept entries in order, the weight's dtype); every other
    tensor as it is."""
    from ...core.io import save_tensors

    out = {}
    for name, t in weights.items():
        k = keep.get(name)
        if k is None:
            out[name] = t
            continue
        k = k.to(t.device)
        out[f"{name}::bits"] = pack(k)
        out[f"{name}::values"] = t.detach()[k]
    meta = {"format": COMPACT_FORMAT, "shapes": json.dumps({n: list(weights[n].shape) for n in keep if n in weights}), "info": json.dumps(info or {})}
    return save_tensors(out, Path(path), meta)


def load_compact(path: Path) -> dict[str, torch.Tensor]:
    """The dense state dict back from `save_compact`'s file (pruned entries +0.0)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != COMPACT_FORMAT:
            raise ValueError(f"{path}: not a compact sparse-weights file (format {meta.get('format')!r})")
        shapes = json.loads(meta["shapes"])
        raw = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for key, t in raw.items():
        if key.endswith("::values"):
            continue
        if key.endswith("::bits"):
            name = key[: -len("::bits")]
            keep = unpack(t, shapes[name])
            values = raw[f"{name}::values"]
            dense = torch.zeros(shapes[name], dtype=values.dtype)
            dense[keep] = values
            out[name] = dense
        else:
            out[key] = t
    return out


# --- measuring ---------------------------------------------------------------------------------


def measure(weights: dict[str, torch.Tensor], prunable: list[str], parameters: list[str] | None = None) -> dict:
    """Sparsity measured on the weights: exact zeros per prunable tensor, over all of them
    (`overall`), and over every parameter (`all_parameters`, embeddings and the head included)."""
    per_layer, zeros, total = {}, 0, 0
    for name in prunable:
        t = weights[name]
        z = int((t == 0).sum())
        per_layer[name] = z / t.numel()
        zeros += z
        total += t.numel()
    block = {"overall": zeros / total if total else 0.0, "zeros": zeros, "prunable": total, "per_layer": per_layer}
    if parameters is not None:
        za = sum(int((weights[n] == 0).sum()) for n in parameters if weights[n].is_floating_point())
        ta = sum(weights[n].numel() for n in parameters if weights[n].is_floating_point())
        block["all_parameters"] = za / ta if ta else 0.0
    return block
