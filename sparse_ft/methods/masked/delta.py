"""The sparse fine-tuned checkpoint: the changed values + int32 indices per tensor, the base
model's identity and fingerprints, written with the one sparse-delta codec
(`artifacts/sparse_delta.py`; `apply_delta` rebuilds full weights from it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ...artifacts import sparse_delta as codec
from ...artifacts.sparse_delta import bits_differ, changed_indices  # noqa: F401  (re-exported by masking)
from ...core.io import fingerprint, save_tensors
from ..base import MethodContext
from .selection import BASE_FILE, DELTA_FILE, DELTA_FORMAT, named_params

log = logging.getLogger(__name__)


def persistent_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    keys = set(module.state_dict().keys())
    return {n: b for n, b in module.named_buffers() if n in keys}


def head_info(module: nn.Module) -> dict:
    """What a rebuild needs to size the head like this run did."""
    config = getattr(module, "config", None)
    if config is not None:
        return {"num_labels": int(getattr(config, "num_labels", 2)), "problem": "regression" if getattr(config, "problem_type", None) == "regression" else "classification"}
    fc = getattr(module, "fc", None)
    return {"num_labels": int(fc.out_features) if isinstance(fc, nn.Linear) else 0, "problem": "classification"}


class SparseDelta:
    """The sparse fine-tuned checkpoint: for every parameter only its changed entries (int32 flat
    indices + values), new tensors (the task head) in full, changed buffers (BatchNorm statistics)
    in full, and the base model it applies to. `python -m sparse_ft.artifacts.apply_delta RUN_DIR OUT_DIR`
    rebuilds the full weights.

    Captured in `prepare`, while the module still holds the initial weights: it fingerprints every
    base tensor (apply_delta checks the rebuilt base against them), keeps the initial values of
    the entries that may change, and, for a randomly initialised model (no base to download),
    writes those initial weights to `delta_base.safetensors` in the run directory, which then
    serves as the base. Its `state_dict` carries all of it across a resume (when `prepare` runs,
    the module already holds the resumed weights).
    """

    def __init__(self, full_names=(), fingerprints=None, buffers=None, track=None, base=None, initial=None):
        self.full_names = list(full_names)
        self.fingerprints = dict(fingerprints or {})
        self.buffers = dict(buffers or {})
        self.track = dict(track or {})  # name -> (flat idx, initial values there)
        self.base = dict(base or {"kind": "unknown"})
        self.initial = initial  # name -> initial tensor (CPU): every entry may change (dense phases)

    def extend(self, module: nn.Module, mask: dict[str, torch.Tensor]) -> None:
        """A new mask (a refresh): its entries join the tracked ones. Entries outside every mask
        so far still hold their initial values, so the values read now are the initial ones."""
        if self.initial is not None:
            return
        params = named_params(module)
        for n, idx in mask.items():
            if n in self.full_names or not idx.numel():
                continue
            idx = idx.cpu()
            old_idx, old_vals = self.track.get(n, (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=params[n].dtype)))
            new = idx[~torch.isin(idx, old_idx)]
            if not new.numel():
                continue
            vals = params[n].detach().view(-1)[new.to(params[n].device)].cpu()
            both, order = torch.cat([old_idx, new]).sort()
            self.track[n] = (both, torch.cat([old_vals, vals])[order])

    @classmethod
    def capture(cls, module: nn.Module, ctx: MethodContext | None, full_names=(), track: dict[str, torch.Tensor] | None = None, track_all: bool = False) -> "SparseDelta":
        params = named_params(module)
        full_names = list(full_names)
        initial = {n: p.detach().to("cpu", copy=True) for n, p in params.items() if n not in full_names} if track_all else None
        fingerprints = {n: fingerprint(p) for n, p in params.items() if n not in full_names}
        buffers = {n: b.detach().to("cpu", copy=True) for n, b in persistent_buffers(module).items()}
        kept = {}
        for n, idx in (track or {}).items():
            if n not in full_names and idx.numel():
                kept[n] = (idx.cpu(), params[n].detach().view(-1)[idx.to(params[n].device)].to("cpu", copy=True))
        base = {"kind": "unknown"}
        if ctx is not None and ctx.model_cfg is not None:  # the run's own model config, as it ran
            from omegaconf import OmegaConf

            model_cfg = OmegaConf.to_container(ctx.model_cfg, resolve=True) if not isinstance(ctx.model_cfg, dict) else dict(ctx.model_cfg)
            run_dir = ctx.run_dir
            info = {"model": model_cfg, "task": {**head_info(module), "modality": "image" if model_cfg.get("arch") == "vision" else "text",
                                                 "head": type(module).__name__}, "seed": ctx.seed}  # head: e.g. a QA span head
            if model_cfg.get("random_init", model_cfg.get("arch") == "vision"):  # no base to fetch: keep it
                save_tensors(module.state_dict(), Path(run_dir) / BASE_FILE)
                base = {"kind": "file", "file": BASE_FILE, "path": str((Path(run_dir) / BASE_FILE).resolve()), "id": "random init", **info}
            else:
                base = {"kind": "pretrained", "id": model_cfg.get("name_or_path"), "revision": model_cfg.get("revision"), **info}
        return cls(full_names, fingerprints, buffers, kept, base, initial)

    def state_dict(self) -> dict:
        return {
            "full_names": list(self.full_names),
            "fingerprints": dict(self.fingerprints),
            "buffers": dict(self.buffers),
            "track_idx": {n: i.to(torch.int32) for n, (i, _) in self.track.items()},
            "track_values": {n: v for n, (_, v) in self.track.items()},
            "base": json.dumps(self.base),
            "initial": self.initial,
        }

    @classmethod
    def from_state(cls, state: dict) -> "SparseDelta":
        track = {n: (state["track_idx"][n].long(), state["track_values"][n]) for n in state["track_idx"]}
        return cls(state["full_names"], state["fingerprints"], state["buffers"], track, json.loads(state["base"]), state.get("initial"))

    def entries(self, module: nn.Module, explicit: dict | None = None) -> tuple[dict, dict]:
        """(sparse {name: (int32 idx, values)}, full {name: tensor}) of what changed."""
        params = named_params(module)
        sparse, full = {}, {}
        if explicit is not None:
            sparse = dict(explicit)
        elif self.initial is not None:
            for n, before in self.initial.items():
                now = params[n].detach().view(-1).cpu()
                changed = changed_indices(now, before)
                if changed.numel():
                    sparse[n] = (changed.to(torch.int32), now[changed])
        else:
            for n, (idx, before) in self.track.items():
                now = params[n].detach().view(-1)[idx.to(params[n].device)].cpu()
                changed = changed_indices(now, before)
                if changed.numel():
                    sparse[n] = (idx[changed].to(torch.int32), now[changed])
        for n in self.full_names:
            full[n] = params[n].detach()
        return sparse, full

    def write(self, module: nn.Module, run_dir: Path, explicit: dict | None = None) -> dict:
        """Write `delta.safetensors`; returns storage entries {artifact: bytes}."""
        sparse, full = self.entries(module, explicit)
        changed_buffers = {}
        for n, b in persistent_buffers(module).items():
            before = self.buffers.get(n)
            if before is None or before.shape != b.shape or bits_differ(b.detach().cpu(), before).any():
                changed_buffers[n] = b.detach()
        meta = {
            "format": DELTA_FORMAT,
            "base": json.dumps(self.base),
            "fingerprints": json.dumps({n: f for n, f in self.fingerprints.items()}),
            "entries": str(sum(int(i.numel()) for i, _ in sparse.values())),
        }
        out = {DELTA_FILE: codec.write(Path(run_dir) / DELTA_FILE, codec.encode(sparse, full, changed_buffers), meta)}
        self.summary = {
            "delta_entries": int(meta["entries"]),
            "delta_full_tensors": sorted(full),
            "delta_buffers": list(changed_buffers),
            "delta_base": self.base.get("id") if self.base["kind"] == "pretrained" else (f"file:{BASE_FILE} (random init)" if self.base["kind"] == "file" else "unknown (no run config)"),
        }
        return out


# --- the method base class ------------------------------------------------------------------------
