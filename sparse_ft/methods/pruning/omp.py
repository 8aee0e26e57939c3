"""One-shot magnitude pruning (OMP, the Essential Sparsity paper): before fine-tuning, remove the
fraction `sparsity` of the *pretrained* prunable weights with the smallest |θ| (or, with
`score=fisher`, the smallest diagonal empirical Fisher over `num_samples` training examples), then
fine-tune everything else with the mask fixed; pruned entries stay exactly zero (base.py).

`scope=global` (the project decision) ranks all prunable weights together, `scope=layer` ranks
within each matrix. `pattern=N:M` keeps the N largest of every M consecutive weights along the
input dimension instead (sparsity 1 − N/M; `method.sparsity` is then not used). Masks of one
pretrained model are nested: a higher sparsity prunes a superset. Under torchrun (DDP or
`distributed=local_sgd`) rank 0's mask is broadcast to every rank, and the pruned entries stay
exactly +0.0 on every rank (tests/methods/pruning/test_pruning_distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Literal

import torch

from ...core.errors import ConfigError
from ...core.options import option
from ..base import MethodContext
from ..registry import register
from .base import PruningMethod, PruningOptions
from .masks import check_nm, parse_pattern

log = logging.getLogger(__name__)


@dataclass
class OmpOptions(PruningOptions):
    pattern: str = option("unstructured", "unstructured | N:M (e.g. 2:4, 4:8): keep the N largest of every M consecutive weights along the input dimension")
    score: Literal["magnitude", "fisher"] = option("magnitude", "what is pruned: the smallest |θ| (magnitude) or the smallest diagonal empirical Fisher (fisher)")
    num_samples: int = option(256, "score=fisher: training examples for the Fisher (more than the train set = all)", low=1)
    fisher_batch_size: int = option(16, "score=fisher: examples per batch of the per-sample gradient pass", low=1)

    def check(self) -> None:
        super().check()
        parse_pattern(self.pattern)


def _length(example) -> int:
    return len(example["input_ids"]) if isinstance(example, dict) and "input_ids" in example else 0


def fisher_scores(module, ctx: MethodContext, names: list[str], num_samples: int, batch_size: int) -> tuple[dict, dict]:
    """Diagonal empirical Fisher of `names` over `num_samples` training examples drawn with the
    run's seed (masked/fisher.py's batched per-sample gradients)."""
    from ..masked.fisher import fisher_diagonal

    if ctx.per_example_loss is None:
        raise ConfigError("method.score", "score=fisher needs per-example losses from the model bundle")
    n_train = len(ctx.train_features)
    n = min(int(num_samples), n_train)
    if n < num_samples:
        log.warning("omp: method.num_samples=%d exceeds the %d training examples; using all of them", num_samples, n_train)
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(ctx.seed)))[:n].tolist()
    order.sort(key=lambda i: (_length(ctx.train_features[i]), i))
    examples = [ctx.train_features[i] for i in order]
    result = fisher_diagonal(module, examples, ctx.collate, ctx.per_example_loss, logits_fn=ctx.logits, kind="empirical",
                             batch_size=int(batch_size), seed=int(ctx.seed), device=ctx.device, names=names,
                             sample_ids=order, progress=sys.stderr.isatty())
    return result.scores, {"fisher_impl": result.impl, "num_samples": n, "fisher_seconds": result.seconds}


@register("omp")
class OneShotMagnitude(PruningMethod):
    """One-shot pruning of the pretrained weights (magnitude or Fisher; unstructured or N:M), then fine-tuning with the mask fixed."""

    name = "omp"
    Options = OmpOptions

    def nm(self):
        return parse_pattern(self.opts.pattern)

    def target_sparsity(self) -> float:
        nm = self.nm()
        return 1.0 - nm[0] / nm[1] if nm else float(self.opts.sparsity)

    def prepare(self, module, ctx: MethodContext, resumed: dict | None = None) -> None:
        super().prepare(module, ctx)
        self.ctx = ctx
        self.find_targets(module)
        nm = self.nm()
        if nm is not None:
            check_nm({n: tuple(p.shape) for n, p in self.params.items()}, nm, self.opts.pattern)
            if abs(float(self.opts.sparsity) - self.target_sparsity()) > 1e-12:
                log.warning("omp: pattern %s fixes the sparsity at %.4f; method.sparsity=%g is not used", self.opts.pattern, self.target_sparsity(), self.opts.sparsity)
        if resumed is not None:  # the masks chosen on the pretrained weights, from the checkpoint
            self.adopt_state(resumed)
            return
        started = time.perf_counter()
        with ctx.phase("mask") if ctx.phase is not None else contextlib.nullcontext():
            scores = self.scores(module, ctx)
            self.keep = self.choose(scores, self.target_sparsity(), nm)
            self.share_masks()  # torchrun: one mask for every rank (rank 0's)
        self.level = self.target_sparsity()
        self.apply_masks()
        self.stats.update(score=self.opts.score, mask_seconds=time.perf_counter() - started)
        total = sum(p.numel() for p in self.params.values())
        log.info("omp: pruned %d of %d prunable weights (%.2f%%, %s, %s, by %s) in %d tensors", self.pruned(), total,
                 100 * self.pruned() / max(total, 1), self.opts.pattern, self.opts.scope, self.opts.score, len(self.params))

    def scores(self, module, ctx) -> dict[str, torch.Tensor]:
        if self.opts.score == "fisher":
            scores, info = fisher_scores(module, ctx, list(self.params), self.opts.num_samples, self.opts.fisher_batch_size)
            self.stats.update(info)
            return scores
        return {n: p.detach().abs() for n, p in self.params.items()}
