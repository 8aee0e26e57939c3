"""Diagonal Fisher information from per-sample gradients: the FISH Mask score.

    F̂_j = (1/N) Σ_i (∂/∂θ_j log p(y_i | x_i))²

— the square of every *per-sample* gradient, summed (the square of a batch gradient is a
different, wrong quantity). This module is the estimator: what is differentiated (`LossTerms`:
the empirical Fisher's labels, or the expected Fisher's classes / draws), the progress report,
which implementation runs, and the result. The two exact implementations of Σ_i g_i² are in
per_sample.py:

* ``hooks`` (fast, batched): layer hooks rebuild each layer's per-sample weight gradients;
* ``loop`` (the reference, and the fallback): one forward/backward per example.

``impl=auto`` uses hooks when every scored parameter lives in a supported layer, after checking
them against the loop on the first two examples, and falls back to the loop (with a warning)
otherwise — e.g. T5 (its relative-position bias is shared by the whole batch) or OPT (its
positional embedding computes its own indices).

The pass runs in eval mode (no dropout; BatchNorm uses and keeps its running statistics).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.progress import progress_bar
from .per_sample import Unsupported, fisher_hooks, fisher_loop

log = logging.getLogger(__name__)

KINDS = ("empirical", "expected")
IMPLS = ("auto", "hooks", "loop")
EXACT_CLASSES_MAX = 32  # expected Fisher: exact sum over classes up to this many, else draws
DEFAULT_DRAWS = 8


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
