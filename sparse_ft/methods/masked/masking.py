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

``MaskedMethod`` is the method base class: a subclass only says which entries to select.
At the end ``finalize`` writes the sparse fine-tuned checkpoint (see ``SparseDelta``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import NO_DECAY, Method, MethodContext, decay_groups

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


def head_names(module: nn.Module) -> list[str]:
    """Parameters of a newly initialised task head: outside the pretrained body of a Hugging Face
    model (``base_model_prefix``; none for text-to-text models, whose LM head is pretrained), or
    torchvision's ``fc``."""
    names = list(named_params(module))
    config = getattr(module, "config", None)
    prefix = getattr(module, "base_model_prefix", None)
    if config is not None:
        if getattr(config, "is_encoder_decoder", False) or not prefix or not isinstance(getattr(module, prefix, None), nn.Module):
            return []
        return [n for n in names if not n.startswith(prefix + ".")]
    fc = getattr(module, "fc", None)
    if isinstance(fc, nn.Linear):
        return [n for n in names if n.startswith("fc.")]
    return []


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
    from ...train.checkpoint import save_tensors

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


def is_no_decay(name: str, p: torch.Tensor) -> bool:
    return any(t in name for t in NO_DECAY) or p.ndim < 2


class SparseUpdate:
    """Flat optimizer vectors over the masked entries; see the module docstring."""

    def __init__(self, module: nn.Module, mask: dict[str, torch.Tensor]):
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
            grad = flat.grad if flat.grad is not None else torch.empty_like(flat)
            for (_, p, idx), off in zip(segs, self.offsets[decay]):
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


def fingerprint(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
    return f"{t.dtype}:{list(t.shape)}:" + hashlib.blake2b(data.tobytes(), digest_size=16).hexdigest()


def bits_differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise: do the bit patterns differ (so -0.0 vs 0.0 and NaN payloads count)?"""
    if a.is_floating_point() and a.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return a.contiguous().view(view) != b.to(a.dtype).contiguous().view(view)
    return a != b


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
    in full, and the base model it applies to. `python -m sparse_ft.apply_delta RUN_DIR OUT_DIR`
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
            info = {"model": model_cfg, "task": {**head_info(module), "modality": "image" if model_cfg.get("arch") == "vision" else "text"}, "seed": ctx.seed}
            if model_cfg.get("random_init", model_cfg.get("arch") == "vision"):  # no base to fetch: keep it
                from ...train.checkpoint import save_tensors

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
                changed = bits_differ(now, before.view(-1)).nonzero().view(-1)
                if changed.numel():
                    sparse[n] = (changed.to(torch.int32), now[changed])
        else:
            for n, (idx, before) in self.track.items():
                now = params[n].detach().view(-1)[idx.to(params[n].device)].cpu()
                changed = bits_differ(now, before).nonzero().view(-1)
                if changed.numel():
                    sparse[n] = (idx[changed].to(torch.int32), now[changed])
        for n in self.full_names:
            full[n] = params[n].detach()
        return sparse, full

    def write(self, module: nn.Module, run_dir: Path, explicit: dict | None = None) -> dict:
        """Write `delta.safetensors`; returns storage entries {artifact: bytes}."""
        from ...train.checkpoint import save_tensors

        sparse, full = self.entries(module, explicit)
        tensors = {}
        for n, (idx, vals) in sparse.items():
            tensors[f"{n}::idx"] = idx.to(torch.int32)
            tensors[f"{n}::val"] = vals
        for n, t in full.items():
            tensors[f"{n}::full"] = t
        changed_buffers = []
        for n, b in persistent_buffers(module).items():
            before = self.buffers.get(n)
            if before is None or before.shape != b.shape or bits_differ(b.detach().cpu(), before).any():
                tensors[f"{n}::buffer"] = b.detach()
                changed_buffers.append(n)
        meta = {
            "format": DELTA_FORMAT,
            "base": json.dumps(self.base),
            "fingerprints": json.dumps({n: f for n, f in self.fingerprints.items()}),
            "entries": str(sum(int(i.numel()) for i, _ in sparse.values())),
        }
        out = {DELTA_FILE: save_tensors(tensors, Path(run_dir) / DELTA_FILE, meta)}
        self.summary = {
            "delta_entries": int(meta["entries"]),
            "delta_full_tensors": sorted(full),
            "delta_buffers": changed_buffers,
            "delta_base": self.base.get("id") if self.base["kind"] == "pretrained" else (f"file:{BASE_FILE} (random init)" if self.base["kind"] == "file" else "unknown (no run config)"),
        }
        return out


# --- the method base class ------------------------------------------------------------------------


@dataclass
class MaskedOptions(MethodOptions):
    """Options every mask-selecting method shares."""

    classifier_in_mask: bool = option(True, "the newly initialised task head is always trained, counted inside k")


@dataclass
class BudgetOptions(MaskedOptions):
    """Methods that choose k = density·|θ| entries and may re-select them."""

    density: float = option(0.005, "k/|θ|: fraction of all parameters trained, head included", low=0, low_open=True, high=1)
    mask_refresh_epochs: int | Literal["never"] | None = option("never", "re-select the mask after every n epochs (FISH §4.3), or never", low=1)


class MaskedMethod(Method):
    Options = MaskedOptions
    """A mask chosen in `prepare` (subclasses implement `select`), exact sparse training.

    Optionally re-selected during training (`method.mask_refresh_epochs`: after every n epochs,
    the FISH paper's §4.3), or deferred: with `ctx.extra["defer_mask"]` (local SGD with a dense
    warm-up, §4.2) every parameter trains until the trainer's first `refresh_mask()` picks the
    mask from the warmed-up weights. After a refresh the sparse delta covers every entry any
    mask held (entries outside all masks stay bit-identical to the initial weights).
    """

    name = "masked"
    refreshable = True  # False: the selection does not depend on the weights (BitFit)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.update: SparseUpdate | None = None
        self.delta: SparseDelta | None = None
        self.mask: dict[str, torch.Tensor] = {}
        self.stats: dict = {"refreshes": 0}
        self._resume: dict | None = None
        self.mask_bytes: int | None = None
        self.ctx: MethodContext | None = None

    # subclasses: the mask (without the head when classifier_in_mask); `round` counts refreshes
    def select(self, module: nn.Module, ctx: MethodContext, head: list[str], k: int | None, round: int = 0) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def head_in_mask(self) -> bool:
        return bool(self.cfg.get("classifier_in_mask", True))

    def mask_info(self) -> dict:
        return {}

    # --- selecting -------------------------------------------------------------------------------
    def _select_mask(self, round: int) -> dict[str, torch.Tensor]:
        module, ctx = self.module, self.ctx
        params = named_params(module)
        total = sum(p.numel() for p in params.values())
        head = head_names(module)
        head_size = sum(params[n].numel() for n in head)
        density = self.cfg.get("density")
        k = budget(total, float(density)) if density is not None else None
        phase = ctx.phase("mask") if ctx.phase is not None else _null()
        started = time.perf_counter()
        with phase:
            if self.head_in_mask() and head:
                rest = None if k is None else k - head_size
                if rest is not None and rest < 0:
                    log.warning("%s: the new head alone (%d entries) exceeds the budget k=%d; the mask is the head only", self.name, head_size, k)
                    rest = 0
                mask = self.select(module, ctx, head, rest, round)
                mask.update(full_mask(module, head))
            else:
                mask = self.select(module, ctx, [], k, round)
        self.stats["mask_seconds"] = self.stats.get("mask_seconds", 0.0) + time.perf_counter() - started
        self.stats.update(total_params=total, head_params=head_size if self.head_in_mask() else 0)
        if k is not None:
            self.stats["target_k"] = k
        return {n: mask.get(n, torch.zeros(0, dtype=torch.long)).long().cpu() for n in params}

    def _adopt(self, mask: dict[str, torch.Tensor], save: bool = True) -> None:
        params = named_params(self.module)
        self.mask = {n: mask.get(n, torch.zeros(0, dtype=torch.long)).long().cpu() for n in params}
        self.stats["k"] = mask_size(self.mask)
        self.stats["total_params"] = sum(p.numel() for p in params.values())
        if self.delta is not None:
            self.delta.extend(self.module, self.mask)
        self.update = SparseUpdate(self.module, self.mask)
        if save and self.ctx is not None and self.ctx.run_dir is not None:
            self.mask_bytes = save_mask(Path(self.ctx.run_dir) / MASK_FILE, self.module, self.mask, {"method": self.name, "k": self.stats["k"], **self.mask_info()})

    # --- hooks -----------------------------------------------------------------------------------
    def prepare(self, module: nn.Module, ctx: MethodContext) -> None:
        self.module, self.ctx = module, ctx
        params = named_params(module)
        head = head_names(module)
        resumed, self._resume = self._resume, None
        if resumed is not None:  # the mask and the initial values come from the checkpoint
            self.stats = dict(resumed.get("stats", {})) or {"refreshes": 0}
            self.delta = SparseDelta.from_state(resumed["delta"])
            if resumed.get("mask") is None:  # still in the dense (deferred) phase
                self._go_dense(params)
                return
            mask = {n: t.long() for n, t in resumed["mask"].items()}
            path = Path(ctx.run_dir) / MASK_FILE if ctx.run_dir is not None else None
            self._adopt(mask, save=path is not None and not path.is_file())
            if path is not None and path.is_file():
                self.mask_bytes = path.stat().st_size
            log.info("%s: resumed with the saved mask (%d entries)", self.name, mask_size(self.mask))
            return
        if (ctx.extra or {}).get("defer_mask"):
            self.delta = SparseDelta.capture(module, ctx, full_names=head, track_all=True)
            self._go_dense(params)
            log.info("%s: mask deferred — every parameter trains until the first refresh (dense warm-up)", self.name)
            return
        mask = self._select_mask(0)
        self.delta = SparseDelta.capture(module, ctx, full_names=head, track=mask)
        self._adopt(mask)
        total = self.stats["total_params"]
        log.info(
            "%s: %d of %d entries trainable (%.4f%%, head %d) in %d tensors; mask in %.2fs",
            self.name, self.stats["k"], total, 100 * self.stats["k"] / total, self.stats["head_params"],
            sum(1 for i in self.mask.values() if i.numel()), self.stats["mask_seconds"],
        )

    def _go_dense(self, params) -> None:
        self.update, self.mask = None, {}
        for p in params.values():
            p.requires_grad_(True)

    def param_groups(self, weight_decay: float) -> list[dict]:
        if self.update is None:  # dense phase
            return decay_groups(self.module.named_parameters(), weight_decay)
        return self.update.param_groups(weight_decay)

    def after_backward(self, step: int) -> None:
        if self.update is not None:
            self.update.gather_grads()

    def after_step(self, step: int) -> None:
        if self.update is not None:
            self.update.scatter()

    def sync_to_module(self) -> None:
        """The flat vectors were overwritten from outside (a local-SGD sync): write them back."""
        if self.update is not None:
            self.update.scatter()

    def refresh_due(self, epoch: int) -> bool:
        every = self.cfg.get("mask_refresh_epochs")
        if every in (None, "never") or not self.refreshable:
            return False
        return (epoch + 1) % int(every) == 0

    def refresh_mask(self) -> bool:
        """Re-select from the current weights; True when what the optimizer sees changed."""
        old = self.mask if self.update is not None else None
        self.stats["refreshes"] = self.stats.get("refreshes", 0) + 1
        mask = self._select_mask(self.stats["refreshes"])
        if old is not None and all(torch.equal(old[n], mask[n]) for n in mask):
            log.info("%s: mask refresh %d selected the same %d entries", self.name, self.stats["refreshes"], mask_size(mask))
            return False
        self._adopt(mask)
        log.info("%s: mask refresh %d: %d entries", self.name, self.stats["refreshes"], self.stats["k"])
        return True

    def mask_state(self) -> dict | None:
        if self.update is None:
            return None
        return {"mask": {n: i.to(torch.int32) for n, i in self.mask.items() if i.numel()}}

    def load_mask_state(self, state: dict | None) -> None:
        """Adopt rank 0's selection."""
        if state is None:
            return
        self.stats["refreshes"] = self.stats.get("refreshes", 0) + 1
        self._adopt({n: i.long() for n, i in state["mask"].items()}, save=False)

    def trainable_count(self) -> int:
        if self.update is None:
            return sum(p.numel() for p in self.module.parameters())
        return mask_size(self.mask)

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        out = self.delta.write(module, run_dir)
        if self.mask_bytes is not None:
            out[MASK_FILE] = self.mask_bytes
        return out

    def state_dict(self) -> dict:
        """What a resume needs: the mask and the delta's record of the initial weights (the
        masked values themselves live in the module's weights)."""
        return {
            "mask": {n: i.to(torch.int32).cpu() for n, i in self.mask.items() if i.numel()} if self.update is not None else None,
            "delta": self.delta.state_dict() if self.delta is not None else None,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float, str, type(None)))},
        }

    def load_state_dict(self, state: dict) -> None:
        """Called before `prepare` on a resume: `prepare` then reuses this mask instead of
        selecting one from the (already trained) weights. Called after `prepare`, it swaps the
        mask in (before the optimizer is built); the values are read from the module."""
        if self.module is None:
            self._resume = state
            return
        if state.get("delta") is not None:
            self.delta = SparseDelta.from_state(state["delta"])
        if state.get("mask") is None:
            self._go_dense(named_params(self.module))
        else:
            self._adopt({n: t.long() for n, t in state["mask"].items()}, save=False)

    def report(self) -> dict:
        k, total = self.stats.get("k", 0), self.stats.get("total_params", 0)
        out = {
            "k": k,
            "density": k / total if total else None,
            "target_density": self.cfg.get("density"),
            "head_params": self.stats.get("head_params"),
            "mask_seconds": self.stats.get("mask_seconds"),
            "optimizer_elements": k,
            "optimizer_state_bytes_adamw": 2 * 4 * k,  # exp_avg + exp_avg_sq, fp32, masked entries only
            "tensors_with_mask": sum(1 for i in self.mask.values() if i.numel()),
        }
        out.update({k2: v for k2, v in self.stats.items() if k2 not in ("k", "total_params", "head_params", "mask_seconds")})
        if self.delta is not None and hasattr(self.delta, "summary"):
            out.update(self.delta.summary)
        return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
