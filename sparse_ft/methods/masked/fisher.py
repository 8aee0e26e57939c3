"""Diagonal Fisher information from per-sample gradients: the FISH Mask score.

    F̂_j = (1/N) Σ_i (∂/∂θ_j log p(y_i | x_i))²

— the square of every *per-sample* gradient, summed (the square of a batch gradient is a
different, wrong quantity). Two exact implementations:

* ``hooks`` (fast, batched; Opacus' approach): forward hooks on the leaf layers that own the
  parameters (Linear, Embedding, LayerNorm, Conv2d, BatchNorm in eval mode) keep their inputs,
  tensor hooks on their outputs receive ∂L/∂output for the whole batch, and each layer's
  per-sample weight gradient is rebuilt from the two (a batched matmul for Linear, an unfold for
  Conv2d, a per-(sample, token) segment sum for Embedding), squared and summed over the batch.
  Parameters have ``requires_grad=False`` during the pass, so autograd computes no batch weight
  gradients at all. ``torch.func.vmap`` over ``functional_call`` was the other candidate; besides
  the reported trouble of transformers' attention-mask helpers under vmap, it would materialise a
  per-sample copy of every gradient (the 30k-row embedding matrix included), so hooks it is.
* ``loop`` (the reference, and the fallback): one forward/backward per example.

``impl=auto`` uses hooks when every scored parameter lives in a supported layer, after checking
them against the loop on the first two examples, and falls back to the loop (with a warning)
otherwise — e.g. T5 (its relative-position bias is shared by the whole batch) or OPT (its
positional embedding computes its own indices).

The pass runs in eval mode (no dropout; BatchNorm uses and keeps its running statistics).

Why one file of ~500 lines: the batched hooks, the per-example loop that checks them, and the
progress report are one algorithm with one contract (per-sample squared gradients, exact); split,
each part would import the others' internals.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.progress import progress_bar

log = logging.getLogger(__name__)

KINDS = ("empirical", "expected")
IMPLS = ("auto", "hooks", "loop")
EXACT_CLASSES_MAX = 32  # expected Fisher: exact sum over classes up to this many, else draws
DEFAULT_DRAWS = 8
_CHUNK_ELEMENTS = 1 << 24  # per-sample weight gradients are built in chunks of at most this many


class Unsupported(RuntimeError):
    """The hook implementation cannot serve this model (the loop can)."""


@dataclass
class FisherResult:
    scores: dict[str, torch.Tensor]  # parameter name -> F̂ (float32, the parameter's shape)
    impl: str  # "hooks" | "loop"
    num_samples: int
    seconds: float
    verify_rel_error: float | None = None  # hooks vs loop on the first examples (impl=auto)


# --- what gets differentiated ---------------------------------------------------------------------


class LossTerms:
    """Turns a batch into scalar terms t_1..t_m with Σ_m (∂t_m/∂θ per sample)² = that sample's
    Fisher contribution. Every term is a sum over the batch, so per-sample gradients separate.

    empirical:            t = Σ_i −log p(y_i|x_i)               (the task's per-example NLL)
    expected, C classes:  t_c = Σ_i √p(c|x_i) · (−log p(c|x_i))  (exact expectation over y)
    expected, draws:      t_s = Σ_i (−log p(y_is|x_i)) / √S,  y_is ~ p(·|x_i)
    expected, regression: t = Σ_i f(x_i)   (Gaussian likelihood of unit variance: E(y−f)² = 1)
    expected, text-to-text (no class logits): target sequences sampled from the model.
    """

    def __init__(self, kind, per_example_loss, logits_fn=None, fisher_samples=None, seed=0, module=None):
        if kind not in KINDS:
            raise ValueError(f"fisher kind {kind!r} is not one of {KINDS}")
        self.kind = kind
        self.per_example_loss = per_example_loss
        self.logits_fn = logits_fn
        self.fisher_samples = fisher_samples
        self.seed = seed
        self.module = module

    def draws_for(self, num_classes: int) -> int:
        """0 = exact sum over the classes, else the number of draws of y per example."""
        if self.fisher_samples:
            return int(self.fisher_samples)
        return 0 if num_classes <= EXACT_CLASSES_MAX else DEFAULT_DRAWS

    def _uniforms(self, sample_ids: torch.Tensor, draws: int, device) -> torch.Tensor:
        # one generator per example: the same draws whatever the batching (hooks == loop)
        rows = []
        for sid in sample_ids.tolist():
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(sid))
            rows.append(torch.rand(draws, generator=g, dtype=torch.float64))
        return torch.stack(rows).to(device)

    def __call__(self, batch: dict, sample_ids: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "empirical":
            return [self.per_example_loss(batch).float().sum()]
        if self.logits_fn is None:
            return self._sequence_draws(batch, sample_ids)
        logits = self.logits_fn(batch).float()
        if logits.shape[-1] == 1:
            return [logits.sum()]
        logp = F.log_softmax(logits, dim=-1)
        draws = self.draws_for(logits.shape[-1])
        if draws == 0:
            p = logp.detach().exp()
            return [(p[:, c].sqrt() * -logp[:, c]).sum() for c in range(logits.shape[-1])]
        u = self._uniforms(sample_ids, draws, logits.device)  # (B, S)
        cdf = logp.detach().double().exp().cumsum(-1)  # (B, C)
        y = (cdf.unsqueeze(1) < u.unsqueeze(-1)).sum(-1).clamp_(max=logits.shape[-1] - 1)  # (B, S)
        scale = 1.0 / math.sqrt(draws)
        return [-logp.gather(1, y[:, s : s + 1]).sum() * scale for s in range(draws)]

    def _sequence_draws(self, batch: dict, sample_ids: torch.Tensor) -> list[torch.Tensor]:
        """Text-to-text: y ~ p(y|x) by ancestral sampling of whole target sequences."""
        module = self.module
        if module is None or not hasattr(module, "generate"):
            raise Unsupported("expected Fisher without class logits needs a generating model")
        draws = int(self.fisher_samples or DEFAULT_DRAWS)
        config = module.config
        eos = config.eos_token_id
        longest = int((batch["target_ids"] != -100).sum(1).max()) if "target_ids" in batch else 8
        targets = []
        for row, sid in enumerate(sample_ids.tolist()):
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + int(sid))
                out = module.generate(
                    input_ids=batch["input_ids"][row : row + 1], attention_mask=batch["attention_mask"][row : row + 1],
                    do_sample=True, top_k=0, top_p=1.0, temperature=1.0, num_beams=1,
                    num_return_sequences=draws, max_new_tokens=longest + 4,
                )
            seq = out[:, 1:].clone()  # drop the decoder start token
            after_eos = (seq == eos).int().cumsum(1) - (seq == eos).int() > 0
            seq[after_eos] = -100
            targets.append(seq)
        width = max(t.shape[1] for t in targets)
        targets = torch.cat([F.pad(t, (0, width - t.shape[1]), value=-100) for t in targets])
        rep = {k: batch[k].repeat_interleave(draws, 0) for k in ("input_ids", "attention_mask")}
        nll = self.per_example_loss({**rep, "target_ids": targets}).float()  # (B*S,)
        # each draw is its own "sample" row: its gradient is squared on its own
        scale = 1.0 / math.sqrt(draws)
        return [(nll * scale).sum()]

    def rows_per_example(self) -> int:
        """Hooks see B·S rows when sequences are drawn (one per draw)."""
        if self.kind == "expected" and self.logits_fn is None:
            return int(self.fisher_samples or DEFAULT_DRAWS)
        return 1


# --- progress -----------------------------------------------------------------------------------------


class FisherProgress:
    """Progress of the Fisher pass: a tqdm bar on a terminal (`tty=True`); otherwise (a log file,
    a SLURM job, a pipe) an INFO line at every further 10% of the examples and at least every
    `interval_s` seconds, each with the elapsed time and an estimate of what is left."""

    def __init__(self, total: int, desc: str, tty: bool, interval_s: float = 30.0, clock=time.monotonic):
        self.total, self.desc, self.interval_s, self.clock = max(int(total), 1), desc, float(interval_s), clock
        self.done = 0
        self.started = self.last = clock()
        self.decile = 0
        self.bar = None
        if tty:
            self.bar = progress_bar(total=self.total, desc=desc, enabled=True)
        else:
            log.info("%s: %d examples", desc, self.total)

    def update(self, n: int = 1) -> None:
        self.done = min(self.done + int(n), self.total)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        decile = self.done * 10 // self.total
        if decile > self.decile or now - self.last >= self.interval_s:
            elapsed = now - self.started
            left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
            log.info("%s: %d/%d examples (%d%%), %.1f s elapsed, ~%.0f s left", self.desc, self.done, self.total,
                     100 * self.done // self.total, elapsed, left)
            self.decile, self.last = decile, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def fisher_loop(module, examples, collate, terms: LossTerms, device, names=None, sample_ids=None, progress=None) -> dict[str, torch.Tensor]:
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


def fisher_hooks(module, examples, collate, terms: LossTerms, device, batch_size: int, names=None, sample_ids=None, progress=None) -> dict[str, torch.Tensor]:
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


def max_rel_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a − b| / max |b| over all entries of all tensors (b is the reference)."""
    diff = max((float((a[n] - b[n]).abs().max()) for n in b if b[n].numel()), default=0.0)
    scale = max((float(b[n].abs().max()) for n in b if b[n].numel()), default=0.0)
    return diff / scale if scale > 0 else diff


def fisher_diagonal(
    module: nn.Module,
    examples: list,
    collate,
    per_example_loss,
    *,
    logits_fn=None,
    kind: str = "empirical",
    fisher_samples: int | None = None,
    batch_size: int = 16,
    impl: str = "auto",
    seed: int = 0,
    device: torch.device | str = "cpu",
    names=None,
    sample_ids=None,
    progress: bool = False,
    progress_interval_s: float = 30.0,
) -> FisherResult:
    """F̂ over `examples` (already chosen; order only affects batching, not the result).
    `progress`: a tqdm bar (pass True on a terminal); otherwise INFO log lines every 10% of the
    examples or `progress_interval_s` seconds (FisherProgress)."""
    if impl not in IMPLS:
        raise ValueError(f"fisher impl {impl!r} is not one of {IMPLS}")
    device = torch.device(device)
    terms = LossTerms(kind, per_example_loss, logits_fn, fisher_samples, seed, module)
    n = len(examples)
    if n == 0:
        raise ValueError("the Fisher needs at least one example")
    started = time.perf_counter()
    verify = None
    chosen = impl
    if impl == "auto":
        chosen, verify = _choose_impl(module, examples, collate, terms, device, names, sample_ids)
    bar = FisherProgress(n, f"fisher ({chosen})", tty=bool(progress), interval_s=progress_interval_s)
    try:
        if chosen == "hooks":
            sq = fisher_hooks(module, examples, collate, terms, device, batch_size, names, sample_ids, progress=bar)
        else:
            sq = fisher_loop(module, examples, collate, terms, device, names, sample_ids, progress=bar)
    finally:
        bar.close()
    scores = {k: v.div_(n) for k, v in sq.items()}
    return FisherResult(scores, chosen, n, time.perf_counter() - started, verify)


def _choose_impl(module, examples, collate, terms, device, names, sample_ids) -> tuple[str, float | None]:
    probe = examples[:2]
    ids = None if sample_ids is None else list(sample_ids)[:2]
    try:
        fast = fisher_hooks(module, probe, collate, terms, device, len(probe), names, ids)
    except Exception as why:  # noqa: BLE001 - Unsupported, or an architecture the hooks break
        log.warning("Fisher: per-sample hooks cannot serve this model (%s: %s); using the per-example loop (slower, exact)", type(why).__name__, why)
        return "loop", None
    ref = fisher_loop(module, probe, collate, terms, device, names, ids)
    err = max_rel_error(fast, ref)
    if not err <= 1e-4:
        log.warning("Fisher: batched per-sample gradients disagree with the per-example loop (rel. error %.2e); using the loop", err)
        return "loop", err
    return "hooks", err
