"""Σ_i (per-sample gradient)² of a module's parameters, exactly, two ways (the engines of the
Fisher estimator, fisher.py; `terms` is its LossTerms: a batch → scalar terms, each a sum over
the batch, whose per-sample gradients squared add up to the wanted sum):

* ``fisher_hooks`` (fast, batched; Opacus' approach): forward hooks on the leaf layers that own
  the parameters (Linear, Embedding, LayerNorm, Conv2d, BatchNorm in eval mode) keep their
  inputs, tensor hooks on their outputs receive ∂L/∂output for the whole batch, and each layer's
  per-sample weight gradient is rebuilt from the two (a batched matmul for Linear, an unfold for
  Conv2d, a per-(sample, token) segment sum for Embedding), squared and summed over the batch.
  Parameters have ``requires_grad=False`` during the pass, so autograd computes no batch weight
  gradients at all. ``torch.func.vmap`` over ``functional_call`` was the other candidate; besides
  the reported trouble of transformers' attention-mask helpers under vmap, it would materialise
  a per-sample copy of every gradient (the 30k-row embedding matrix included), so hooks it is.
  A model they cannot serve raises `Unsupported`.
* ``fisher_loop`` (the reference, and the fallback): one forward/backward per example.

Both run in eval mode (no dropout; BatchNorm uses and keeps its running statistics) and return
the sums, not divided by N.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_CHUNK_ELEMENTS = 1 << 24  # per-sample weight gradients are built in chunks of at most this many


class Unsupported(RuntimeError):
    """The hook implementation cannot serve this model (the loop can)."""




# --- the reference: one example at a time ---------------------------------------------------------


def _scored(module: nn.Module, names) -> dict[str, nn.Parameter]:
    params = dict(module.named_parameters())
    return {n: params[n] for n in (names if names is not None else params)}


@contextlib.contextmanager
def _fisher_mode(module: nn.Module, params: dict[str, nn.Parameter], requires_grad: bool):
    """Eval mode and the wanted requires_grad flags for the pass; everything restored after."""
    was_training = module.training
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    module.eval()
    for n, p in module.named_parameters():
        p.requires_grad_(requires_grad and n in params)
    try:
        with torch.enable_grad():
            yield
    finally:
        for n, p in module.named_parameters():
            p.requires_grad_(flags[n])
        module.train(was_training)
        module.zero_grad(set_to_none=True)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def fisher_loop(module, examples, collate, terms, device, names=None, sample_ids=None, progress=None) -> dict[str, torch.Tensor]:
    """Σ_i (per-sample gradient)², one example per forward/backward (not divided by N)."""
    params = _scored(module, names)
    sq = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    ids = list(range(len(examples))) if sample_ids is None else list(sample_ids)
    plist = list(params.values())
    with _fisher_mode(module, params, requires_grad=True):
        for i, ex in enumerate(examples):
            batch = _to_device(collate([ex]), device)
            ts = terms(batch, torch.tensor([ids[i]]))
            for j, t in enumerate(ts):
                grads = torch.autograd.grad(t, plist, retain_graph=j + 1 < len(ts), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        sq[n].add_(g.float().square())
            if progress is not None:
                progress.update(1)
    return sq


# --- batched per-sample gradients through layer hooks ----------------------------------------------


def _layer_kind(m: nn.Module) -> str | None:
    t = type(m)
    if t.forward is nn.Linear.forward and isinstance(m, nn.Linear):
        return "linear"
    if t.forward is nn.Embedding.forward and isinstance(m, nn.Embedding):
        if m.max_norm is None and not m.scale_grad_by_freq:
            return "embedding"
        return None
    if t.forward is nn.LayerNorm.forward and isinstance(m, nn.LayerNorm):
        return "layernorm"
    if t.forward is nn.Conv2d.forward and isinstance(m, nn.Conv2d):
        if m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return "conv2d"
        return None
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and t.forward is nn.modules.batchnorm._BatchNorm.forward:
        return "batchnorm"
    return None


class PerSampleHooks:
    """Accumulates Σ_i g_i² for the parameters of supported leaf layers (see module docstring)."""

    def __init__(self, module: nn.Module, names=None):
        self.module = module
        params = _scored(module, names)
        owner: dict[int, list] = {}
        for mod_name, m in module.named_modules(remove_duplicate=False):
            for pname, p in m._parameters.items():
                if p is not None:
                    owner.setdefault(id(p), []).append((m, pname))
        self.layers: dict[nn.Module, tuple[str, dict[str, str]]] = {}
        self.params = params
        for n, p in params.items():
            owners = {id(m): (m, pname) for m, pname in owner.get(id(p), [])}
            if len(owners) != 1:
                raise Unsupported(f"{n} is shared by {len(owners)} layers (tied weights)")
            (m, pname), = owners.values()
            kind = _layer_kind(m)
            if kind is None:
                raise Unsupported(f"{n} belongs to a {type(m).__name__}, which has no per-sample rule")
            self.layers.setdefault(m, (kind, {}))[1][pname] = n
        self.sq = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
        self.handles = []
        self.rows = 0
        self.calls: dict[nn.Module, int] = {}
        self.pending: dict[str, torch.Tensor] = {}  # per-sample grads of layers called twice or more
        self.pending_emb: dict[str, list] = {}
        self.leaves: dict[torch.dtype, torch.Tensor] = {}

    def __enter__(self):
        for m in self.layers:
            self.handles.append(m.register_forward_hook(self._forward, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def _leaf(self, dtype, device):
        leaf = self.leaves.get(dtype)
        if leaf is None or leaf.device != device:
            leaf = self.leaves[dtype] = torch.zeros((), dtype=dtype, device=device, requires_grad=True)
        return leaf

    def start_forward(self, rows: int) -> None:
        self.rows = rows
        self.calls = {}

    def _forward(self, m, args, kwargs, output):
        kind, _ = self.layers[m]
        x = args[0] if args else kwargs.get("input")
        if not torch.is_tensor(x) or not torch.is_tensor(output):
            raise Unsupported(f"{type(m).__name__} called without a tensor input")
        B = self.rows
        if x.shape[0] != B or output.shape[0] != B:
            if kind == "embedding" and x.shape[0] == 1 and output.shape[0] == 1:
                # shared across the batch (e.g. BERT's position ids): give every row its own copy
                x = x.expand(B, *x.shape[1:])
                output = output.expand(B, *output.shape[1:])
            else:
                raise Unsupported(f"{type(m).__name__} sees a leading dimension {x.shape[0]} != batch {B}")
        if not output.requires_grad:
            output = output + self._leaf(output.dtype, output.device)
        self.calls[m] = self.calls.get(m, 0) + 1
        saved = {"x": x.detach(), "version": x._version}  # derived tensors are cached here too
        output.register_hook(lambda g, m=m, saved=saved: self._backward(m, saved, g))
        return output

    # per-sample gradients of one call, handed to _add
    def _backward(self, m, saved, g):
        kind, names = self.layers[m]
        x = saved["x"]
        if x._version != saved["version"]:
            raise Unsupported(f"the input of a {type(m).__name__} was modified in place after the layer used it")
        g = g.detach()
        B = self.rows
        if kind == "linear":
            gB = g.reshape(B, -1, g.shape[-1]).float()
            xB = x.reshape(B, -1, x.shape[-1]).float()
            if "weight" in names:
                self._outer(m, names["weight"], gB, xB, m.weight.shape)
            if "bias" in names:
                self._add(m, names["bias"], gB.sum(1), 0)
        elif kind == "embedding":
            if "weight" in names:
                self._embedding(m, names["weight"], x, g)
        elif kind == "layernorm":
            shape = tuple(m.normalized_shape)
            gB = g.reshape(B, -1, *shape).float()
            if "weight" in names:
                if "xh" not in saved:  # reused by the other backward passes (expected Fisher)
                    saved["xh"] = F.layer_norm(x.float(), shape, eps=m.eps).reshape(B, -1, *shape)
                xh = saved["xh"]
                self._add(m, names["weight"], (gB * xh).sum(1), 0)
            if "bias" in names:
                self._add(m, names["bias"], gB.sum(1), 0)
        elif kind == "conv2d":
            if "weight" in names:
                if "cols" not in saved:  # (B, L, C·kh·kw), reused by the other backward passes
                    saved["cols"] = F.unfold(x.float(), m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride).transpose(1, 2)
                cols = saved["cols"]
                gB = g.reshape(B, g.shape[1], -1).float()
                self._outer(m, names["weight"], gB.transpose(1, 2), cols, m.weight.shape)
            if "bias" in names:
                self._add(m, names["bias"], g.float().reshape(B, g.shape[1], -1).sum(2), 0)
        elif kind == "batchnorm":
            if m.training or m.running_mean is None:
                raise Unsupported("BatchNorm in training mode mixes the samples of a batch")
            shape = (1, -1) + (1,) * (x.dim() - 2)
            dims = tuple(range(2, x.dim()))
            gf = g.float()
            if "weight" in names:
                if "xh" not in saved:
                    saved["xh"] = (x.float() - m.running_mean.float().view(shape)) * torch.rsqrt(m.running_var.float().view(shape) + m.eps)
                xh = saved["xh"]
                self._add(m, names["weight"], (gf * xh).sum(dims) if dims else gf * xh, 0)
            if "bias" in names:
                self._add(m, names["bias"], gf.sum(dims) if dims else gf.clone(), 0)

    def _outer(self, m, name, gB, xB, shape):
        """Per-sample weight gradients gB[i]ᵀ xB[i] ((B, L, out), (B, L, in) → (out, in)), squared
        and summed. On CPU one sample at a time: each (out, in) product stays in cache and is
        squared into the sum at once (addcmul), ~6x faster than materialising a (B, out, in)
        batch; on GPU chunked batched matmuls keep the kernels few."""
        B = gB.shape[0]
        if self.calls.get(m, 1) == 1 and gB.device.type == "cpu":
            acc = self.sq[name].view(shape[0], -1)
            for i in range(B):
                w = torch.mm(gB[i].t(), xB[i])
                acc.addcmul_(w, w)
            return
        per = max(1, _CHUNK_ELEMENTS // max(1, math.prod(shape)))
        for s in range(0, B, per):
            w = torch.bmm(gB[s : s + per].transpose(1, 2), xB[s : s + per])
            self._add(m, name, w.view(-1, *shape), s)

    def _add(self, m, name, per_sample, start):
        if self.calls.get(m, 1) == 1:  # one call per forward: square right away
            self.sq[name].add_(per_sample.square_().sum(0))
            return
        buf = self.pending.get(name)
        if buf is None:
            buf = self.pending[name] = torch.zeros((self.rows, *self.sq[name].shape), dtype=torch.float32, device=per_sample.device)
        buf[start : start + per_sample.shape[0]].add_(per_sample)

    def _embedding(self, m, name, ids, g):
        B, V = self.rows, m.num_embeddings
        ids = ids.reshape(B, -1)
        rows = g.reshape(B, ids.shape[1], -1).float()
        valid = torch.ones_like(ids, dtype=torch.bool) if m.padding_idx is None else ids != m.padding_idx
        keys = (torch.arange(B, device=ids.device).unsqueeze(1) * V + ids)[valid]
        rows = rows[valid]
        if self.calls.get(m, 1) > 1:
            self.pending_emb.setdefault(name, []).append((keys, rows))
            return
        self._embedding_square(name, V, keys, rows)

    def _embedding_square(self, name, V, keys, rows):
        uniq, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(uniq.numel(), rows.shape[1], dtype=torch.float32, device=rows.device).index_add_(0, inverse, rows)
        self.sq[name].index_add_(0, uniq % V, summed.square())

    def flush(self) -> None:
        """After every backward pass: square the per-sample sums of layers called repeatedly."""
        for name, buf in self.pending.items():
            self.sq[name].add_(buf.square().sum(0))
        self.pending = {}
        for name, parts in self.pending_emb.items():
            keys = torch.cat([k for k, _ in parts])
            rows = torch.cat([r for _, r in parts])
            self._embedding_square(name, self.sq[name].shape[0], keys, rows)
        self.pending_emb = {}


def fisher_hooks(module, examples, collate, terms, device, batch_size: int, names=None, sample_ids=None, progress=None) -> dict[str, torch.Tensor]:
    """Σ_i (per-sample gradient)² in batches through layer hooks (not divided by N)."""
    params = _scored(module, names)
    ids = list(range(len(examples))) if sample_ids is None else list(sample_ids)
    hooks = PerSampleHooks(module, names=list(params))
    with _fisher_mode(module, params, requires_grad=False), hooks:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = _to_device(collate(chunk), device)
            hooks.start_forward(len(chunk) * terms.rows_per_example())
            ts = terms(batch, torch.tensor(ids[start : start + batch_size]))
            for j, t in enumerate(ts):
                if not t.requires_grad:
                    raise Unsupported("the loss does not depend on any hooked layer")
                t.backward(retain_graph=j + 1 < len(ts))
                hooks.flush()
            for leaf in hooks.leaves.values():
                leaf.grad = None
            if progress is not None:
                progress.update(len(chunk))
    return hooks.sq
