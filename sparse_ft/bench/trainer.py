"""The trainer group: runner step time vs a bare PyTorch loop (same model, batches, optimizer, clipping)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from .harness import MiniLMOnMRPC, fit_method


def time_runner(setup: MiniLMOnMRPC) -> float:
    """Seconds per optimizer step inside Trainer.fit (its "train" phase: hooks, logging, checks)."""
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as tmp:
        return fit_method(setup, setup.build_method(), Path(tmp))[0]


def time_bare(setup: MiniLMOnMRPC, same_optimizer: bool = True) -> float:
    """The loop a researcher would write by hand: DataLoader in the same order, AdamW without
    decay on biases/norms, linear schedule, clipping; forward, backward, step, zero_grad.
    same_optimizer: the runner's optimizer construction (isolates the loop's own overhead);
    otherwise torch's default AdamW, what a hand-written loop usually gets."""
    from torch.utils.data import DataLoader

    from ..methods.base import decay_groups
    from ..train.optim import build_optimizer
    from ..train.state import epoch_order

    setup.reset()
    cfg = setup.cfg.trainer
    module = setup.bundle.module
    module.train()
    groups = decay_groups(module.named_parameters(), cfg.weight_decay)
    opt = build_optimizer(cfg, groups) if same_optimizer else torch.optim.AdamW(groups, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / setup.steps))
    order = epoch_order(len(setup.features["train"]), 0, 0)
    loader = DataLoader(setup.features["train"], batch_size=cfg.batch_size, sampler=order, collate_fn=setup.bundle.collate)
    params = [p for p in module.parameters()]
    start = time.perf_counter()
    for batch in loader:
        loss = setup.bundle.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / setup.steps


def bench_trainer(args) -> dict:
    setup = MiniLMOnMRPC(args.glue_dir, args.batch_size, args.steps)
    time_bare(setup)  # warm-up: allocator, kernels, tokenizer caches
    runner, bare, plain = [], [], []
    for _ in range(args.repeats):  # alternate to cancel drift
        bare.append(time_bare(setup))
        runner.append(time_runner(setup))
        plain.append(time_bare(setup, same_optimizer=False))
    r, b, p = statistics.median(runner), statistics.median(bare), statistics.median(plain)
    return {
        "trainer_step_s": r,
        "bare_step_s": b,
        "trainer_overhead_ratio": r / b,
        "bare_default_adamw_step_s": p,
        "trainer_vs_default_adamw_loop_ratio": r / p,
        "trainer_bench_setup": f"minilm, MRPC train batches of {args.batch_size}, {args.steps} steps x {args.repeats} alternating repeats, CPU threads={torch.get_num_threads()}",
    }


