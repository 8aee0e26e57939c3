"""The FISH benchmark group: `bench_fish(args) -> dict` (registered in `sparse_ft.bench.__main__.GROUPS`).

On MiniLM with real MRPC batches, in one process, side by side:

  fish_step_time_ratio          seconds per optimizer step inside Trainer.fit, fish (0.5%, exact
                                sparse updates) / dense; alternating repeats, best of each
  fish_dense_weight_grads_step_time_ratio  the exact sparse update computing full weight
                                gradients (method.weight_grads=dense) / dense: the step before
                                masked weight gradients
  fish_backward_time_ratio      one backward pass, fish (masked weight gradients) / dense
  fish_naive_step_time_ratio    the same for the naive approach (dense AdamW over every tensor,
                                gradients multiplied by the mask) / dense — the reference point
  fish_optimizer_state_ratio    bytes of the optimizer's state after training, fish / dense
  fisher_batched_speedup        per-sample Fisher of N = 256 examples: one-example loop time /
                                batched per-sample hooks time (both exact)
  fisher_max_rel_error          max |hooks − loop| / max |loop| over all entries
  fisher_seconds_per_1k_samples the batched Fisher's seconds per 1000 examples

Uses `args.glue_dir`, `args.batch_size`, `args.steps`, `args.repeats` (the bench CLI's flags).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..core.events import EventHandler
from .harness import MiniLMOnMRPC, fit_method

FISHER_N = 256


def _state_bytes(optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size()
    return total


class _NaiveMask(EventHandler):
    """The authors' approach: every tensor in a dense AdamW, gradients multiplied by the mask."""

    def __init__(self, mask: dict):
        from ..methods.base import Method

        self.inner = Method(OmegaConf.create({"name": "naive_mask"}))
        self.mask = mask

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prepare(self, module, ctx, resumed=None):
        self.inner.prepare(module, ctx, resumed)
        params = dict(module.named_parameters())
        self.masks = []
        for n, p in params.items():
            p.requires_grad_(True)
            m = torch.zeros(p.numel(), dtype=p.dtype)
            idx = self.mask.get(n)
            if idx is not None and idx.numel():
                m[idx] = 1
            self.masks.append((p, m.view_as(p)))

    def param_groups(self, weight_decay):
        return self.inner.param_groups(weight_decay)

    def after_backward(self, trainer):
        for p, m in self.masks:
            if p.grad is not None:
                p.grad.mul_(m)


def backward_ratio(setup, mask: dict, repeats: int) -> dict:
    """Seconds of one backward pass on one MRPC batch: FISH's (exact sparse update, masked
    weight gradients) / dense's, best of alternating repeats."""
    from ..methods.masked.sparse_update import SparseUpdate

    setup.reset()
    module = setup.bundle.module
    module.train()
    batch = setup.bundle.collate([setup.features["train"][i] for i in range(int(setup.cfg.trainer.batch_size))])

    def backward_s() -> float:
        torch.manual_seed(0)
        loss = setup.bundle.loss(batch)
        t0 = time.perf_counter()
        loss.backward()
        t = time.perf_counter() - t0
        module.zero_grad(set_to_none=True)
        return t

    dense, fish = [], []
    for _ in range(max(2, repeats)):
        for p in module.parameters():
            p.requires_grad_(True)
        dense.append(backward_s())
        update = SparseUpdate(module, mask, sampled_linear_grads=True)
        fish.append(backward_s())
        update.close()
    return {"fish_backward_s": min(fish), "dense_backward_s": min(dense), "fish_backward_time_ratio": min(fish) / min(dense)}


def bench_fish(args) -> dict:
    from ..methods import build_method
    from ..methods.masked.fish import _length
    from ..methods.masked.fisher import LossTerms, max_rel_error
    from ..methods.masked.per_sample import fisher_hooks, fisher_loop

    steps = max(int(args.steps), math.ceil(FISHER_N / int(args.batch_size)))
    setup = MiniLMOnMRPC(args.glue_dir, args.batch_size, steps, method="fish", extra=["method.num_samples=256"])
    dense_cfg = OmegaConf.create({"name": "dense"})
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_fish_") as tmp:
        tmp = Path(tmp)
        # the mask once (a fish method per repeat then reuses it through mask_path)
        first = build_method(setup.cfg.method)
        fit_method(setup, first, tmp)
        mask = first.mask
        mask_path = tmp / "mask.safetensors"
        fish_cfg = OmegaConf.merge(setup.cfg.method, {"mask_path": str(mask_path), "weight_grads": "sampled"})
        fish_dense_grads_cfg = OmegaConf.merge(fish_cfg, {"weight_grads": "dense"})
        out["fish_bench_k"] = first.stats["k"]
        out["fish_bench_density"] = first.stats["k"] / first.stats["total_params"]
        fit_method(setup, build_method(dense_cfg), tmp)  # warm-up
        dense_t, fish_t, naive_t, fish_dg_t = [], [], [], []
        dense_bytes = fish_bytes = None
        for _ in range(int(args.repeats)):  # alternate to cancel drift
            t, trainer = fit_method(setup, build_method(dense_cfg), tmp)
            dense_t.append(t)
            dense_bytes = _state_bytes(trainer.optimizer)
            t, trainer = fit_method(setup, build_method(fish_cfg), tmp)
            fish_t.append(t)
            fish_bytes = _state_bytes(trainer.optimizer)
            t, _ = fit_method(setup, _NaiveMask(mask), tmp)
            naive_t.append(t)
            t, _ = fit_method(setup, build_method(fish_dense_grads_cfg), tmp)
            fish_dg_t.append(t)
        # best of the alternating repeats (timeit's rule): on a CPU shared with other jobs the
        # minimum is the least disturbed measurement of each, taken under the same conditions
        d, f, nv, fdg = min(dense_t), min(fish_t), min(naive_t), min(fish_dg_t)
        out.update(
            fish_dense_step_s=d, fish_step_s=f, fish_naive_step_s=nv,
            fish_step_time_ratio=f / d, fish_naive_step_time_ratio=nv / d,
            fish_dense_weight_grads_step_time_ratio=fdg / d,  # the same exact sparse update with full dW (before sampled gradients)
            **backward_ratio(setup, mask, int(args.repeats)),
            fish_optimizer_state_bytes=fish_bytes, dense_optimizer_state_bytes=dense_bytes,
            fish_optimizer_state_ratio=fish_bytes / dense_bytes,
        )

    # the Fisher: batched per-sample hooks against the one-example loop, same N = 256 examples
    setup.reset()
    module = setup.bundle.module
    feats = setup.features["train"]
    order = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:FISHER_N].tolist()
    order.sort(key=lambda i: (_length(feats[i]), i))
    examples = [feats[i] for i in order]
    terms = LossTerms("empirical", setup.bundle.per_example_loss)
    device = torch.device("cpu")
    fisher_hooks(module, examples[:16], setup.bundle.collate, terms, device, 16)  # warm-up
    hooks_t, loop_t = [], []
    fast = ref = None
    for _ in range(max(1, min(int(args.repeats), 2))):
        t0 = time.perf_counter()
        fast = fisher_hooks(module, examples, setup.bundle.collate, terms, device, 16)
        hooks_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = fisher_loop(module, examples, setup.bundle.collate, terms, device)
        loop_t.append(time.perf_counter() - t0)
    h, lp = min(hooks_t), min(loop_t)
    out.update(
        fisher_hooks_s=h, fisher_loop_s=lp, fisher_batched_speedup=lp / h,
        fisher_max_rel_error=max_rel_error(fast, ref), fisher_seconds_per_1k_samples=1000 * h / FISHER_N,
        fish_bench_setup=(
            f"minilm, MRPC train batches of {args.batch_size}, {steps} steps x {args.repeats} alternating repeats; "
            f"Fisher N={FISHER_N} (batch 16 vs one at a time); CPU threads={torch.get_num_threads()}"
        ),
    )
    return out
