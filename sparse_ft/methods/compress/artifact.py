"""The residual artifact shared by ERE, BITQ and LRA: one safetensors file, its JSON metadata in the
safetensors header, and the one decoder that both `compress()` (for the reconstruction it
returns) and `python -m sparse_ft.artifacts.ere decompress` use — so the two always give the same tensors.

Every key of θ' gets one entry in `metadata["sparse_ft_residual"]["entries"]` (in θ' order):

  code        stored tensors                     reconstruction
  base        —                                  θ[key] (unchanged by fine-tuning: nothing stored)
  alias       —                                  the reconstruction of entries[key]["of"] (tied weights)
  raw         key::raw (as it is)                the stored tensor (1-D tensors that changed, new heads,
                                                 tensors whose shape or dtype differs from θ)
  lowrank_q   key::codes uint8 (U then V codes,   θ + U·diag(D)·Vᵀ with U, V dequantised and, when
              b-bit packed), key::side (5, r):   "stiefel", projected onto orthonormal columns (ERE)
              U lo, U step, V lo, V step, D
  lowrank     key::u (n, r), key::s (r),         θ + U·diag(S)·Vᵀ (LRA)
              key::v (m, r)
  quant       key::codes uint8 (n·m codes,        θ + dequantised residual (BITQ)
              b-bit packed), key::side (2, s)

Tensors with more than two dimensions are coded as the matrix (shape[0], prod(shape[1:])).
`base.sha256` fingerprints the θ tensors the reconstruction reads, so decompression against the
wrong base model fails instead of producing silently wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...core import accounting
from ...core.io import save_tensors, tensor_bytes
from .lowrank import stiefel_project
from .quant import dequantize, unpack_bits

FORMAT = "sparse-ft-residual/1"
META_KEY = "sparse_ft_residual"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_of(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in the artifact")
    return value


def matrix_shape(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    return shape[0], math.prod(shape[1:])


# --- which tensors are coded how ------------------------------------------------------------------


@dataclass
class Plan:
    kinds: dict[str, str] = field(default_factory=dict)  # key -> base | alias | raw | matrix
    aliases: dict[str, str] = field(default_factory=dict)  # key -> the key it repeats
    why_raw: dict[str, str] = field(default_factory=dict)

    @property
    def matrices(self) -> list[str]:
        return [k for k, v in self.kinds.items() if v == "matrix"]

    @property
    def raw(self) -> list[str]:
        return [k for k, v in self.kinds.items() if v == "raw"]


def _quick_id(t: torch.Tensor) -> tuple:
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return (tuple(t.shape), t.dtype)
    probe = flat[:: max(1, flat.numel() // 64)][:64]
    return (tuple(t.shape), t.dtype, 0.0 if t.is_complex() else probe.double().sum().item())


def plan_entries(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], new_keys=()) -> Plan:
    """Classify every key of `tuned`: unchanged from `base` (not stored), a repeat of an earlier
    key whose θ and θ' are both equal (tied weights: stored once), a tensor stored as it is (no
    counterpart in `base` or named in `new_keys` — e.g. a task head that `base` holds only as its
    seeded random init —, a different shape or dtype, fewer than 2 dimensions, not floating point),
    or a matrix whose residual θ' − θ is coded."""
    plan = Plan()
    new_keys = set(new_keys)
    seen: dict[tuple, list[str]] = {}
    for key, t in tuned.items():
        b = None if key in new_keys else base.get(key)
        ident = _quick_id(t) + (None if b is None else _quick_id(b),)
        for other in seen.get(ident, []):
            ob = None if other in new_keys else base.get(other)
            if torch.equal(tuned[other], t) and ((b is None and ob is None) or (b is not None and ob is not None and torch.equal(ob, b))):
                plan.kinds[key], plan.aliases[key] = "alias", other
                break
        if key in plan.kinds:
            continue
        seen.setdefault(ident, []).append(key)
        if b is None:
            plan.kinds[key], plan.why_raw[key] = "raw", "no pretrained counterpart"
        elif tuple(b.shape) != tuple(t.shape) or b.dtype != t.dtype:
            plan.kinds[key], plan.why_raw[key] = "raw", f"shape/dtype differs from the base ({tuple(b.shape)} {b.dtype})"
        elif torch.equal(b, t):
            plan.kinds[key] = "base"
        elif not t.is_floating_point():
            plan.kinds[key], plan.why_raw[key] = "raw", "not floating point"
        elif t.ndim < 2 or 0 in tuple(t.shape):
            plan.kinds[key], plan.why_raw[key] = "raw", f"{t.ndim}-D"
        else:
            plan.kinds[key] = "matrix"
    return plan


def dense_fp32_bytes(tuned: dict[str, torch.Tensor], plan: Plan | None = None) -> int:
    """Bytes of a dense fp32 checkpoint of `tuned` (tied tensors once; integers at their size):
    sparse_ft.core.accounting.dense_fp32_bytes, the plan's aliases skipped."""
    aliases = [k for k, kind in plan.kinds.items() if kind == "alias"] if plan is not None else ()
    return accounting.dense_fp32_bytes(tuned, skip=aliases)


def base_fingerprint(base: dict[str, torch.Tensor], keys) -> str:
    """sha256 over name, dtype, shape and bytes of the base tensors the reconstruction reads."""
    h = hashlib.sha256()
    for key in sorted(keys):
        t = base[key]
        h.update(f"{key}|{dtype_name(t.dtype)}|{list(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def base_keys(meta: dict) -> list[str]:
    return [k for k, e in meta["entries"].items() if e["code"] not in ("raw", "alias")]


# --- the file ---------------------------------------------------------------------------------------


def write_artifact(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> int:
    """Write the artifact atomically; returns its size on disk (the storage it costs)."""
    return save_tensors(tensors, Path(path), {META_KEY: json.dumps(meta, separators=(",", ":"))})


def read_artifact(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a residual artifact (no {META_KEY!r} in its safetensors metadata)")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, this version reads {FORMAT!r}")
    return tensors, meta


# --- decoding ---------------------------------------------------------------------------------------


def decode_lowrank_q(tensors: dict, key: str, e: dict) -> torch.Tensor:
    n, m = e["matrix"]
    r, bits = int(e["rank"]), int(e["bits"])
    if r == 0:
        return torch.zeros(n, m)
    codes = unpack_bits(tensors[f"{key}::codes"], bits, (n + m) * r)
    side = tensors[f"{key}::side"].float()
    u = dequantize(codes[: n * r].view(n, r), side[0], side[1], axis=1)
    v = dequantize(codes[n * r:].view(m, r), side[2], side[3], axis=1)
    if e.get("stiefel", True):
        u, v = stiefel_project(u), stiefel_project(v)
    return (u * side[4]) @ v.T


def decode_lowrank(tensors: dict, key: str, e: dict) -> torch.Tensor:
    n, m = e["matrix"]
    if int(e["rank"]) == 0:
        return torch.zeros(n, m)
    u, s, v = (tensors[f"{key}::{p}"].float() for p in ("u", "s", "v"))
    return (u * s) @ v.T


def decode_quant(tensors: dict, key: str, e: dict) -> torch.Tensor:
    n, m = e["matrix"]
    codes = unpack_bits(tensors[f"{key}::codes"], int(e["bits"]), n * m).view(n, m)
    side = tensors[f"{key}::side"].float()
    return dequantize(codes, side[0], side[1], axis=int(e["axis"]))


DECODERS = {"lowrank_q": decode_lowrank_q, "lowrank": decode_lowrank, "quant": decode_quant}


def decode_delta(tensors: dict, key: str, e: dict) -> torch.Tensor:
    """The coded residual of one entry, fp32, in the tensor's own shape."""
    return DECODERS[e["code"]](tensors, key, e).reshape(e["shape"])


def decode(tensors: dict[str, torch.Tensor], meta: dict, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full reconstructed state dict (θ' layout, keys in θ' order). Residuals are added in fp32
    and cast to the tensor's dtype; unchanged tensors are `base`'s own."""
    missing = [k for k in base_keys(meta) if k not in base]
    if missing:
        raise KeyError(f"the base lacks {len(missing)} tensor(s) the artifact needs, e.g. {missing[:3]}")
    out: dict[str, torch.Tensor] = {}
    for key, e in meta["entries"].items():
        code = e["code"]
        if code == "alias":
            continue
        if code == "base":
            out[key] = base[key]
        elif code == "raw":
            out[key] = tensors[f"{key}::raw"]
        elif code in DECODERS:
            b = base[key]
            if list(b.shape) != list(e["shape"]):
                raise ValueError(f"{key}: the base has shape {list(b.shape)}, the artifact {e['shape']}")
            delta = decode_delta(tensors, key, e)
            out[key] = (b.detach().to("cpu").float() + delta).to(dtype_of(e["dtype"]))
        else:
            raise ValueError(f"{key}: unknown code {code!r}")
    for key, e in meta["entries"].items():
        if e["code"] == "alias":
            out[key] = out[e["of"]]
    return {k: out[k] for k in meta["entries"]}
