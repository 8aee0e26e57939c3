"""FISH Mask (Sung et al. 2021): train only the k entries with the largest diagonal Fisher.

The Fisher F̂ = (1/N) Σ_i (∇θ log p(y_i|x_i))² is estimated once, before training, on N training
examples drawn with the run's seed (per-sample gradients, see `fisher.py`), the k = density·|θ|
largest entries over all tensors form the mask (ties broken by position: exactly k), and the
mask stays fixed while `masking.SparseUpdate` trains exactly those entries. The new classifier
head is always in the mask and counted inside k (`classifier_in_mask`). N = 0 gives the paper's
"0 samples" point: a random mask of the same size.

The mask is saved as `mask.safetensors` in the run directory; `method.mask_path` reuses one
(across seeds, runs or tasks: the head is not part of a reused mask when it is always trained).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Literal

import torch

from ...core.errors import ConfigError
from ...core.options import option
from .fisher import fisher_diagonal
from .masking import BudgetOptions, MaskedMethod, load_mask, named_params, random_mask, topk_mask
from ..registry import register

log = logging.getLogger(__name__)


def _length(example) -> int:
    if isinstance(example, dict) and "input_ids" in example:
        return len(example["input_ids"])
    return 0


@dataclass
class FishOptions(BudgetOptions):
    density: float = option(0.005, "k/|θ|: fraction of all parameters trained (the paper's 0.5%), head included", low=0, low_open=True, high=1)
    num_samples: int = option(1024, "N training examples for the Fisher (0 = random mask; more than the train set = all)", low=0)
    fisher: Literal["empirical", "expected"] = option("empirical", "empirical (the true label) | expected (expectation over y ~ p(y|x))")
    fisher_samples: int | None = option(None, "expected Fisher: draws of y per example; null = exact over classes (<= 32), else 8 draws", low=1)
    mask_path: str | None = option(None, "reuse a saved mask: a mask.safetensors file or a run directory holding one")
    batch_size: int = option(16, "examples per batch in the Fisher pass (per-sample gradients are exact at any size)", low=1)
    fisher_impl: Literal["auto", "hooks", "loop"] = option("auto", "auto (batched per-sample hooks, verified, else loop) | hooks | loop")
    head_warmup_steps: int = option(0, "train only the new head for this many steps before the Fisher pass (0 = the paper: the Fisher goes through the random head)", low=0)
    head_warmup_lr: float = option(1e-3, "AdamW learning rate of the head warm-up", low=0, low_open=True)


@register("fish")
class Fish(MaskedMethod):
    name = "fish"
    Options = FishOptions

    def _warm_up_head(self, module, ctx, head: list[str]) -> None:
        """A short head-only fine-tune (the rest frozen), so the Fisher's gradients do not all flow
        through a random head; the warmed-up head is the head's starting point for training."""
        steps, params = int(self.cfg.head_warmup_steps), named_params(module)
        if not head:
            raise ConfigError("method.head_warmup_steps", "this model has no new task head to warm up")
        flags = {n: p.requires_grad for n, p in params.items()}
        for n, p in params.items():
            p.requires_grad_(n in head)
        opt = torch.optim.AdamW([params[n] for n in head], lr=float(self.cfg.head_warmup_lr), weight_decay=0.0)
        g = torch.Generator().manual_seed(int(ctx.seed) + 17)
        batch_size = int(self.cfg.batch_size)
        was_training = module.training
        module.train()
        losses = []
        for step in range(steps):
            idx = torch.randint(len(ctx.train_features), (batch_size,), generator=g).tolist()
            batch = {k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in ctx.collate([ctx.train_features[i] for i in idx]).items()}
            loss = ctx.loss(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        module.train(was_training)
        for n, p in params.items():
            p.requires_grad_(flags[n])
        self.stats.update(head_warmup_steps=steps, head_warmup_loss_first=losses[0], head_warmup_loss_last=losses[-1])
        log.info("fish: head warm-up, %d steps: loss %.4f → %.4f", steps, losses[0], losses[-1])

    def mask_info(self) -> dict:
        return {k: self.stats.get(k) for k in ("source", "num_samples", "fisher", "fisher_impl")}

    def select(self, module, ctx, head, k, round=0):
        cfg = self.cfg
        params = named_params(module)
        scored = [n for n in params if n not in head]
        if cfg.get("mask_path"):
            mask = load_mask(cfg.mask_path, module, skip=head)
            self.stats.update(source=f"file:{cfg.mask_path}", num_samples=None, fisher=None, fisher_impl=None)
            log.info("fish: mask loaded from %s (%d entries besides the head)", cfg.mask_path, sum(i.numel() for i in mask.values()))
            return mask
        n_train = len(ctx.train_features)
        n = int(cfg.num_samples)
        if n == 0:
            log.info("fish: num_samples=0 — a random mask of the same size (the paper's 0-sample point)")
            self.stats.update(source="random (num_samples=0)", num_samples=0, fisher=None, fisher_impl=None)
            return random_mask({s: params[s].numel() for s in scored}, k, ctx.seed)
        if n > n_train:
            log.warning("fish: method.num_samples=%d exceeds the %d training examples; using all of them", n, n_train)
            n = n_train
        if ctx.per_example_loss is None:
            raise ConfigError("method.name", "fish needs per-example losses from the model bundle")
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(ctx.seed)))[:n].tolist()
        order.sort(key=lambda i: (_length(ctx.train_features[i]), i))  # similar lengths share a batch: less padding
        examples = [ctx.train_features[i] for i in order]
        if int(cfg.get("head_warmup_steps", 0)) > 0:
            self._warm_up_head(module, ctx, head)
        started = time.perf_counter()
        result = fisher_diagonal(
            module, examples, ctx.collate, ctx.per_example_loss,
            logits_fn=ctx.logits, kind=cfg.fisher, fisher_samples=cfg.get("fisher_samples"),
            batch_size=int(cfg.batch_size), impl=cfg.get("fisher_impl", "auto"), seed=int(ctx.seed),
            device=ctx.device, names=scored, sample_ids=order, progress=sys.stderr.isatty(),
        )
        fisher_s = time.perf_counter() - started
        mask = topk_mask({s: result.scores[s] for s in scored}, k)
        self.stats.update(
            source="fisher", num_samples=n, fisher=cfg.fisher, fisher_impl=result.impl,
            fisher_seconds=fisher_s, fisher_seconds_per_1k_samples=1000 * fisher_s / n,
            fisher_verify_rel_error=result.verify_rel_error,
        )
        log.info("fish: %s Fisher over %d examples (%s) in %.2fs", cfg.fisher, n, result.impl, fisher_s)
        return mask
