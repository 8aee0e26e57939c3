"""The READ benchmark group: `bench_read(args) -> dict` (to be registered in
`sparse_ft.bench.__main__.GROUPS` as "read": "read:bench_read").

In one process, side by side, on CPU: a T5 shaped like t5-small (random init, no download:
d_model 512, d_kv 64, 8 heads, d_ff 2048, 6 encoder + 6 decoder layers, with the MiniLM
tokenizer's 30,522-token vocabulary: 58.7M parameters) on real MRPC batches in T5's text-to-text
form (`args.batch_size` examples, at most 128 tokens; the generated synthetic_nli task when
`args.glue_dir` has no MRPC), trained by the project's own optimizer (AdamW) over each method's
`param_groups`, each method on a fresh copy of the same initial weights.

  read_memory_ratio / lora_memory_ratio / adapter_memory_ratio / lst_memory_ratio
        peak training memory of the method / that of dense fine-tuning. Peak memory is measured
        as summary.json measures it on CPU: the process's peak resident set (VmHWM, reset through
        /proc/self/clear_refs by telemetry.resources.ResourceMonitor) over two optimizer steps
        (forward, backward, AdamW creating its state), minus the resident set before the model
        was built: weights + what autograd keeps + gradients + optimizer state. glibc is told to
        serve every allocation of 64 KiB or more with mmap (a fixed threshold), so what one
        method frees goes back to the system before the next is measured.
  <method>_peak_bytes          those peaks, in bytes (dense_peak_bytes the reference)
  read_step_time_ratio         seconds per optimizer step, READ / dense (after one warm-up step;
                               alternating repeats, best of each)
  read_trainable_params_{2,6,12}_layers   READ's trainable parameters (side network; T5 trains no
                               head) on the same shape with 2, 6 and 12 encoder and decoder layers
  lst_trainable_params_{2,6,12}_layers    the same for LST (one side block per layer: grows)

Uses `args.glue_dir`, `args.batch_size`, `args.steps`, `args.repeats` (the bench CLI's flags).
"""

from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

import torch

from .harness import compose

T5_SMALL_SHAPE = ["model.config.d_model=512", "model.config.d_kv=64", "model.config.d_ff=2048", "model.config.num_heads=8",
                  "model.config.num_layers=6", "model.config.num_decoder_layers=6"]
MEMORY_METHODS = ("dense", "read", "lora", "adapter", "lst")
MEASURED_STEPS = 2


def _fixed_mmap_threshold(bytes_: int = 64 * 1024) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, bytes_))  # M_MMAP_THRESHOLD: fixed, no dynamic growth
    except (OSError, AttributeError):
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class T5Setup:
    def __init__(self, args, layers: int | None = None):
        from ..models import build_model
        from ..tasks import load_task

        glue = Path(args.glue_dir)
        steps = max(int(args.steps), MEASURED_STEPS + 1)
        task = ["task=mrpc", f"task.data_dir={glue}"] if (glue / "MRPC" / "train.tsv").is_file() else ["task=synthetic_nli"]
        depth = [f"model.config.num_layers={layers}", f"model.config.num_decoder_layers={layers}"] if layers else []
        self.overrides = ["model=tiny_t5", *T5_SMALL_SHAPE, *depth, *task, f"task.max_train_samples={args.batch_size * steps}",
                          "task.max_eval_samples=8", "trainer.device=cpu", "energy=off"]
        self.cfg = compose(self.overrides)
        self.task = load_task(self.cfg.task, 0)
        self.build_model = lambda: build_model(self.cfg.model, self.task, max_length=128)
        self.data = "mrpc" if task[0] == "task=mrpc" else "synthetic_nli"
        self.args = args
        self.steps = steps

    def batches(self, bundle) -> list[dict]:
        feats = bundle.encode(self.task, "train")
        b = self.args.batch_size
        return [bundle.collate(feats[i : i + b]) for i in range(0, b * self.steps, b)]

    def method(self, name: str, meta: bool = False):
        """(method, wrapped bundle, optimizer) of `name` on a fresh copy of the initial weights."""
        from ..methods import build_method
        from ..train.optim import build_optimizer

        torch.manual_seed(0)
        if meta:
            with torch.device("meta"):
                bundle = self.build_model()
        else:
            bundle = self.build_model()
        # LST's published init (Fisher-guided pruning) needs training data this harness does not pass;
        # |W| pruning (or, on the meta device where nothing can be copied, random init) builds the same
        # side network shapes, so the memory and parameter figures are the same
        extra = [f"method.init={'random' if meta else 'magnitude'}"] if name == "lst" else []
        method = build_method(compose([*self.overrides, f"method={name}", *extra]).method)
        wrapped = method.wrap(bundle, None)
        method.prepare(wrapped.module, None)
        opt = None if meta else build_optimizer(self.cfg.trainer, method.param_groups(float(self.cfg.trainer.weight_decay)))
        return method, wrapped, opt


def _step(wrapped, opt, batch) -> None:
    loss = wrapped.loss(batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _peak_training_bytes(setup: T5Setup, name: str, batches: list[dict]) -> int:
    from ..telemetry.resources import ResourceMonitor

    _trim()
    before = _rss_bytes()
    method, wrapped, opt = setup.method(name)
    wrapped.module.train()
    monitor = ResourceMonitor(torch.device("cpu"))
    with monitor.phase("train"):
        for batch in batches[:MEASURED_STEPS]:
            _step(wrapped, opt, batch)
    peak = monitor.peak_rss_bytes["train"] - before
    del method, wrapped, opt
    _trim()
    return int(peak)


def _seconds_per_step(wrapped, opt, batches: list[dict]) -> float:
    wrapped.module.train()
    _step(wrapped, opt, batches[0])  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        _step(wrapped, opt, batch)
    return (time.perf_counter() - start) / max(1, len(batches) - 1)


def bench_read(args) -> dict:
    mmap_fixed = _fixed_mmap_threshold()
    setup = T5Setup(args)
    with torch.no_grad():
        probe = setup.build_model()
    batches = setup.batches(probe)
    total = sum(p.numel() for p in probe.module.parameters())
    del probe
    out: dict = {"read_bench_model": "t5-small shape (random init), MiniLM vocabulary", "read_bench_params": total,
                 "read_bench_task": setup.data, "read_bench_batch_size": int(args.batch_size),
                 "read_bench_memory_measure": "peak RSS (VmHWM) over 2 optimizer steps minus RSS before the model was built"
                                              + ("" if mmap_fixed else " (glibc mmap threshold could not be fixed)")}

    peaks = {name: _peak_training_bytes(setup, name, batches) for name in MEMORY_METHODS}
    for name, peak in peaks.items():
        out[f"{name}_peak_bytes"] = peak
    for name in MEMORY_METHODS[1:]:
        out[f"{name}_memory_ratio"] = peaks[name] / peaks["dense"]

    runs = {name: setup.method(name)[1:] for name in ("dense", "read")}
    best = {name: float("inf") for name in runs}
    for _ in range(max(1, int(args.repeats))):
        for name, (wrapped, opt) in runs.items():
            best[name] = min(best[name], _seconds_per_step(wrapped, opt, batches))
    out["dense_seconds_per_step"] = best["dense"]
    out["read_seconds_per_step"] = best["read"]
    out["read_step_time_ratio"] = best["read"] / best["dense"]
    del runs
    _trim()

    for layers in (2, 6, 12):
        deep = T5Setup(args, layers)
        for name in ("read", "lst"):
            method, _, _ = deep.method(name, meta=True)
            out[f"{name}_trainable_params_{layers}_layers"] = int(method.trainable_count())
    return out


if __name__ == "__main__":  # python -m sparse_ft.bench.read [--steps N ...]: this group alone
    import argparse
    import json

    from .harness import DEFAULT_GLUE

    parser = argparse.ArgumentParser()
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    print(json.dumps(bench_read(parser.parse_args()), indent=2))
