"""What ERE, BITQ and LRA share: options, the residual source, and the `compress()` driver.

The driver sorts θ' into tensors that are unchanged (not stored), tied repeats (stored once),
tensors stored as they are (1-D ones that changed, new heads with no pretrained counterpart: fp32,
counted) and matrices whose residual Δ = θ' − θ a subclass codes (`encode`). It writes one
artifact (artifact.py), decodes it with the same function `python -m sparse_ft.artifacts.ere decompress`
uses, and reports bytes, per-layer errors and timings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ...core.options import MethodOptions, option
from ...core.progress import progress_bar
from .artifact import (FORMAT, META_KEY, Plan, base_fingerprint, decode, dense_fp32_bytes, dtype_name,
                       matrix_shape, plan_entries, write_artifact)
from .base import CompressContext, CompressResult, Compressor

log = logging.getLogger(__name__)


# Options every residual compressor shares, declared in each method's Options after its own keys
# (so `python -m sparse_ft.methods ere` lists the method's keys first).


def device_option():
    return option("auto", "where the residuals are factorised (auto: cuda when available); the reconstruction is "
                          "always decoded on the CPU, exactly as `python -m sparse_ft.artifacts.ere decompress` decodes it")


def svd_option():
    return option("auto", "truncated SVD: exact (torch.linalg.svd), randomized (torch.svd_lowrank) or auto "
                          "(randomized when (rank + svd_oversample)·8 <= min(n, m), else exact)")


def oversample_option():
    return option(8, "randomized SVD: extra columns beyond the rank", low=0)


def niter_option():
    return option(4, "randomized SVD: power iterations (2 is ~0.5% off the optimal error on decaying spectra, 4 ~0.05%)", low=0)


def seed_option():
    return option(0, "seed of the randomized SVD (the global random state is left alone)")


Device = Literal["auto", "cpu", "cuda"]
SVDMode = Literal["auto", "exact", "randomized"]


@dataclass
class ResidualOptions(MethodOptions):
    device: Device = device_option()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ...core.errors import ConfigError

        raise ConfigError("method.device", "cuda was asked for but torch sees no GPU")
    return torch.device(name)


class Residuals:
    """Δ = θ' − θ of the coded matrices, as fp32 (n, m) matrices on `device`, computed on demand."""

    def __init__(self, base: dict, tuned: dict, keys: list[str], device: torch.device):
        self.base, self.tuned, self.keys, self.device = base, tuned, list(keys), device

    def shape(self, key: str) -> tuple[int, int]:
        return matrix_shape(self.tuned[key].shape)

    def __call__(self, key: str) -> torch.Tensor:
        t, b = self.tuned[key], self.base[key]
        d = t.detach().to(self.device, torch.float32) - b.detach().to(self.device, torch.float32)
        return d.reshape(self.shape(key))


@dataclass
class EncodeContext:
    plan: Plan
    dense_bytes: int  # a dense fp32 checkpoint of θ'
    raw_bytes: int  # tensors stored as they are
    header_bytes: int  # an estimate of the safetensors header without the coded matrices


@dataclass
class Coded:
    """One coded matrix: its metadata entry and its tensors (names without the `key::` prefix)."""

    entry: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def progress(items, desc: str):
    return progress_bar(items, desc=desc, leave=False)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def header_entry_bytes(name: str) -> int:
    """A generous estimate of one tensor's entry in the safetensors header."""
    return len(name) + 100


class ResidualCompressor(Compressor):
    """Base of the residual compressors. Subclasses set `name`, `Options` and implement `encode`."""

    name = "residual"
    Options = ResidualOptions

    @property
    def artifact_name(self) -> str:
        return f"{self.name}.safetensors"

    # --- for subclasses ------------------------------------------------------------------------
    def encode(self, residuals: Residuals, ctx: EncodeContext) -> dict[str, Coded]:
        raise NotImplementedError

    def budget_bytes(self, ctx: EncodeContext) -> float | None:
        """A hard cap on the artifact's size (None: none)."""
        return None

    def trim(self, coded: dict[str, Coded], excess: int) -> None:
        """Make `coded` at least `excess` bytes smaller (only called when budget_bytes is set)."""
        raise NotImplementedError

    def extra_report(self) -> dict:
        return {}

    # --- the driver ------------------------------------------------------------------------------
    def compress(self, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], out_dir: Path,
                 context: CompressContext = CompressContext()) -> CompressResult:
        seconds: dict[str, float] = {}
        start = time.perf_counter()
        plan = plan_entries(base, tuned, context.new_keys)
        dense = dense_fp32_bytes(tuned, plan)
        entries, tensors = {}, {}
        for key, kind in plan.kinds.items():
            t = tuned[key]
            if kind == "base":
                entries[key] = {"code": "base", "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
            elif kind == "alias":
                entries[key] = {"code": "alias", "of": plan.aliases[key]}
            elif kind == "raw":
                entries[key] = {"code": "raw", "shape": list(t.shape), "dtype": dtype_name(t.dtype)}
                tensors[f"{key}::raw"] = t.detach().to("cpu")
            else:
                entries[key] = None  # filled below, keeps θ' order
        raw_bytes = sum(tensor_bytes(t) for t in tensors.values())
        header = 8 + len(json.dumps(self._meta({k: e for k, e in entries.items() if e is not None}, "0" * 64, context.base_identity), separators=(",", ":")))
        header += sum(header_entry_bytes(n) for n in tensors)
        ctx = EncodeContext(plan, dense, raw_bytes, header)
        seconds["plan"] = time.perf_counter() - start

        device = resolve_device(self.opts.device)
        residuals = Residuals(base, tuned, plan.matrices, device)
        start = time.perf_counter()
        coded = self.encode(residuals, ctx)
        seconds["encode"] = time.perf_counter() - start

        start = time.perf_counter()
        fingerprint = base_fingerprint(base, [k for k, v in plan.kinds.items() if v in ("base", "matrix")])
        seconds["fingerprint"] = time.perf_counter() - start
        path = Path(out_dir) / self.artifact_name
        start = time.perf_counter()
        cap = self.budget_bytes(ctx)
        for attempt in range(20):
            all_entries, all_tensors = dict(entries), dict(tensors)
            for key, c in coded.items():
                all_entries[key] = c.entry
                all_tensors.update({f"{key}::{part}": t for part, t in c.tensors.items()})
            meta = self._meta(all_entries, fingerprint, context.base_identity)
            size = write_artifact(path, all_tensors, meta)
            if cap is None or size <= cap:
                break
            log.info("%s: artifact %d bytes > budget %d bytes: trimming", self.name, size, int(cap))
            self.trim(coded, int(size - cap))
        else:  # pragma: no cover - trim always makes progress
            raise RuntimeError(f"{self.name}: could not fit the artifact into {cap} bytes")
        seconds["write"] = time.perf_counter() - start

        start = time.perf_counter()
        reconstructed = decode(all_tensors, meta, base)
        seconds["decode"] = time.perf_counter() - start
        report = self._report(plan, coded, all_tensors, size, dense, reconstructed, base, tuned, seconds)
        log.info("%s: %d matrices coded, %d tensors stored as they are, %d unchanged: %d bytes = %.3f%% of dense fp32 "
                 "(relative residual error %.4f)", self.name, len(coded), len(plan.raw), report["tensors"]["unchanged"],
                 size, 100 * size / max(dense, 1), report["rel_error"] or 0.0)
        return CompressResult(reconstructed, {path.name: size}, report)

    def _meta(self, entries: dict, fingerprint: str, identity: dict | None) -> dict:
        options = {k: v for k, v in dataclasses.asdict(self.opts).items()}
        return {"format": FORMAT, "method": self.name, "options": options,
                "base": {"sha256": fingerprint, "identity": identity}, "entries": entries}

    def _report(self, plan, coded, tensors, size, dense, reconstructed, base, tuned, seconds) -> dict:
        layers, err2, tot2 = {}, 0.0, 0.0
        for key, c in coded.items():
            t = tuned[key].detach().float()
            dd = float(torch.linalg.vector_norm(t - base[key].detach().float())) ** 2
            de = float(torch.linalg.vector_norm(reconstructed[key].detach().float() - t)) ** 2
            err2, tot2 = err2 + de, tot2 + dd
            layers[key] = {**c.report, "bytes": sum(tensor_bytes(t) for t in c.tensors.values()),
                           "rel_error": math.sqrt(de / dd) if dd > 0 else 0.0}
        coded_bytes = sum(v["bytes"] for v in layers.values())
        raw_bytes = sum(tensor_bytes(tensors[f"{k}::raw"]) for k in plan.raw)
        kinds = list(plan.kinds.values())
        return {
            "method": self.name,
            "artifact": self.artifact_name,
            "bytes": {"total": size, "coded": coded_bytes, "raw": raw_bytes, "header": size - coded_bytes - raw_bytes},
            "dense_fp32_bytes": dense,
            "storage_ratio": size / dense if dense else None,
            "rel_error": math.sqrt(err2 / tot2) if tot2 > 0 else (0.0 if coded else None),
            "tensors": {"coded": len(coded), "raw": kinds.count("raw"), "unchanged": kinds.count("base"), "aliases": kinds.count("alias")},
            "raw_keys": dict(plan.why_raw),
            "aliases": dict(plan.aliases),
            **self.extra_report(),
            "seconds": {k: round(v, 4) for k, v in seconds.items()},
            "layers": layers,
        }
