"""Benchmarks: `python -m sparse_ft.bench --out bench.json [--only GROUP]`.

Every figure is measured in this process, side by side with its reference, and printed as a
table; the JSON file holds one key per figure. Benchmarks use the trainer and the methods,
never the other way round.

Groups:
  trainer  runner step time vs a bare PyTorch loop (same model, batches, optimizer, clipping)
  energy   step time with the energy sampler running vs without
  fish     FISH step time and optimizer state vs dense, batched per-sample Fisher vs a loop
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

log = logging.getLogger("sparse_ft.bench")

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DEFAULT_GLUE = REPO.parent / "shared" / "data" / "glue"


def compose(overrides: list[str]):
    """The same config a `python run.py <overrides>` would get (without Hydra's run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import sparse_ft.resolvers  # noqa: F401

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class MiniLMOnMRPC:
    """MiniLM with real MRPC batches: the set-up every CPU benchmark of this project uses."""

    def __init__(self, data_dir: Path, batch_size: int, steps: int, method: str = "dense", extra: list[str] | None = None):
        from .methods import build_method
        from .models import build_model
        from .tasks import load_task

        if not (data_dir / "MRPC" / "train.tsv").is_file():
            raise SystemExit(f"--glue-dir {data_dir}: no MRPC/train.tsv there (the benchmark uses the real MRPC files)")
        n = batch_size * steps
        self.cfg = compose(
            [
                "model=minilm", "task=mrpc", f"method={method}", f"task.data_dir={data_dir}",
                f"task.max_train_samples={n}", "task.max_eval_samples=32", f"trainer.batch_size={batch_size}",
                f"trainer.max_steps={steps}", f"trainer.log_every={steps}", "trainer.device=cpu", "energy=off",
                "trainer.select_best=false", "trainer.progress=false", *(extra or []),
            ]
        )
        torch.manual_seed(0)
        self.task = load_task(self.cfg.task, 0)
        self.bundle = build_model(self.cfg.model, self.task, max_length=128)
        self.features = {s: self.bundle.encode(self.task, s) for s in ("train", "validation")}
        self.initial = copy.deepcopy(self.bundle.module.state_dict())
        self.build_method = lambda: build_method(self.cfg.method)
        self.steps = steps

    def reset(self):
        self.bundle.module.load_state_dict(self.initial)
        self.bundle.module.zero_grad(set_to_none=True)


def time_runner(setup: MiniLMOnMRPC) -> float:
    """Seconds per optimizer step inside Trainer.fit (its "train" phase: hooks, logging, checks)."""
    from .methods import MethodContext
    from .telemetry.resources import ResourceMonitor
    from .train.trainer import Trainer

    setup.reset()
    device = torch.device("cpu")
    method = setup.build_method()
    resources = ResourceMonitor(device)
    ctx = MethodContext(Path("."), device, 0, setup.features["train"], setup.bundle.collate, setup.bundle.loss, phase=resources.phase)
    method.prepare(setup.bundle.module, ctx)
    trainer = Trainer(setup.cfg.trainer, setup.bundle, setup.task, method, setup.features, device, 0, phase=resources.phase)
    trainer.fit()
    return resources.seconds["train"] / setup.steps


def time_bare(setup: MiniLMOnMRPC, same_optimizer: bool = True) -> float:
    """The loop a researcher would write by hand: DataLoader in the same order, AdamW without
    decay on biases/norms, linear schedule, clipping; forward, backward, step, zero_grad.
    same_optimizer: the runner's optimizer construction (isolates the loop's own overhead);
    otherwise torch's default AdamW, what a hand-written loop usually gets."""
    from torch.utils.data import DataLoader

    from .methods.base import decay_groups
    from .train.optim import build_optimizer
    from .train.trainer import epoch_order

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


def bench_energy(args) -> dict:
    from .telemetry.energy_bench import sampler_overhead_ratio

    setup = MiniLMOnMRPC(args.glue_dir, args.batch_size, 1)
    module = setup.bundle.module
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    batch = setup.bundle.collate([setup.features["train"][i] for i in range(args.batch_size)])

    def step():
        loss = setup.bundle.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    fake = REPO / "tests" / "fake_bin"
    interval = float(compose([]).energy.interval_s)  # the configured default sampling period
    out = sampler_overhead_ratio(step, steps=max(args.steps, 30), interval_s=interval, fake_smi_dir=str(fake) if args.fake_smi else None)
    out["energy_sampler_interval_s"] = interval
    return out


def bench_fish(args) -> dict:
    from .bench_fish import bench_fish as run

    return run(args)


GROUPS = {"trainer": bench_trainer, "energy": bench_energy, "fish": bench_fish}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file for the figures")
    parser.add_argument("--only", choices=sorted(GROUPS), action="append", help="run only this group (repeatable)")
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE, help="GLUE folder holding MRPC/")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fake-smi", action="store_true", help="energy group: sample the test suite's fake nvidia-smi (CPU machines)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for name in args.only or list(GROUPS):
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results.update(GROUPS[name](args))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
