"""The pruning benchmark group: `bench_pruning(args) -> dict`.

On MiniLM with real MRPC batches (harness.MiniLMOnMRPC), in one process, side by side:

  pst_trainable_fraction                 PST's trainable parameters (U, V, A, B, R, C + the head)
                                         / all parameters of the pretrained model (r1 = r2 = 8)
  pst_optimizer_state_ratio_vs_movement  bytes of the optimizer's state after a few steps, PST /
                                         movement pruning (AdamW over every weight + the scores)
  magnitude_step_time_ratio              seconds per optimizer step inside Trainer.fit, magnitude
                                         pruning (cubic schedule over the timed steps, mask
                                         re-chosen every step of the ramp) / dense; alternating
                                         repeats, best of each
  nm_2_4_linear_speedup                  a 2:4-sparse fp16 linear layer (torch's semi-structured
                                         sparse kernels) against the same dense layer, CUDA only;
                                         on a machine without CUDA the value says "needs CUDA"

Uses `args.glue_dir`, `args.batch_size`, `args.steps`, `args.repeats` (the bench CLI's flags).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .harness import MiniLMOnMRPC


def optimizer_state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def fit(setup: MiniLMOnMRPC, method, run_dir: Path, reset: bool = True) -> tuple[float, object]:
    """Seconds per optimizer step inside Trainer.fit ("train" phase) and the trainer; like
    harness.fit_method, but the method gets the step budget up front (its schedule needs it) and
    may wrap the model."""
    from ..methods import MethodContext
    from ..methods.base import Staged
    from ..telemetry.resources import ResourceMonitor
    from ..train.trainer import Trainer

    if reset:
        setup.reset()
        for p in setup.bundle.module.parameters():
            p.requires_grad_(True)
    device = torch.device("cpu")
    resources = ResourceMonitor(device)
    b = setup.bundle
    ctx = MethodContext(
        run_dir=run_dir, device=device, seed=0, train_features=setup.features["train"], collate=b.collate, loss=b.loss,
        per_example_loss=b.per_example_loss, logits=b.logits, phase=resources.phase, total_steps=setup.steps,
        steps_per_epoch=setup.steps, model_cfg=setup.cfg.model, bundle=b,
    )
    bundle = method.wrap(b, ctx)
    method.prepare(bundle.module, ctx)
    if isinstance(method, Staged):
        for i, stage in enumerate(method.stages()):
            method.begin_stage(i, stage, ctx)
    trainer = Trainer(setup.cfg.trainer, bundle, setup.task, method, setup.features, device, 0, phase=resources.phase)
    trainer.fit()
    return resources.seconds["train"] / setup.steps, trainer


def nm_linear_speedup(tokens: int = 8192, features: int = 4096, repeats: int = 50) -> tuple[float | str, dict]:
    """Dense fp16 linear time / 2:4 semi-structured sparse linear time on CUDA (same weights,
    pruned 2:4 by magnitude); "needs CUDA" elsewhere."""
    if not torch.cuda.is_available():
        return "needs CUDA", {}
    import torch.nn.functional as F
    from torch.sparse import to_sparse_semi_structured

    from ..methods.pruning.masks import nm_keep

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    w = torch.randn(features, features, device=dev, dtype=torch.float16, generator=g)
    w = w * nm_keep(w, 2, 4).to(w.dtype)
    x = torch.randn(tokens, features, device=dev, dtype=torch.float16, generator=g)
    try:
        ws = to_sparse_semi_structured(w)
        ref, out = F.linear(x, w), F.linear(x, ws)
    except (RuntimeError, NotImplementedError) as err:
        return f"semi-structured sparse kernels unavailable: {type(err).__name__}: {str(err).splitlines()[0]}", {}

    def timed(weight) -> float:
        for _ in range(5):
            F.linear(x, weight)
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                F.linear(x, weight)
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / repeats)
        return best

    dense_ms, sparse_ms = timed(w), timed(ws)
    err = float((out.float() - ref.float()).abs().max() / ref.float().abs().max())
    info = {"nm_2_4_dense_ms": dense_ms, "nm_2_4_sparse_ms": sparse_ms, "nm_2_4_max_rel_error": err,
            "nm_2_4_setup": f"x ({tokens}x{features}) @ W^T ({features}x{features}), fp16, {torch.cuda.get_device_name()}"}
    return dense_ms / sparse_ms, info


def bench_pruning(args) -> dict:
    from ..methods import build_method

    steps = int(args.steps)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_pruning_") as tmp:
        tmp = Path(tmp)
        setup = MiniLMOnMRPC(args.glue_dir, args.batch_size, steps, method="magnitude")
        total = sum(p.numel() for p in setup.bundle.module.parameters())
        dense_cfg = OmegaConf.create({"name": "dense"})
        magnitude_cfg = setup.cfg.method
        fit(setup, build_method(dense_cfg), tmp)  # warm-up
        dense_t, mag_t = [], []
        sparsity = None
        for _ in range(int(args.repeats)):  # alternate to cancel drift; best of each (timeit's rule)
            t, _ = fit(setup, build_method(dense_cfg), tmp)
            dense_t.append(t)
            method = build_method(magnitude_cfg)
            t, _ = fit(setup, method, tmp)
            mag_t.append(t)
            sparsity = method.level
        d, m = min(dense_t), min(mag_t)
        out.update(magnitude_dense_step_s=d, magnitude_step_s=m, magnitude_step_time_ratio=m / d, magnitude_final_sparsity=sparsity)

        movement = build_method(OmegaConf.merge(magnitude_cfg, {"name": "movement"}))
        t, trainer = fit(setup, movement, tmp)
        movement_bytes = optimizer_state_bytes(trainer.optimizer)
        out.update(movement_step_s=t, movement_optimizer_state_bytes=movement_bytes)

        # PST changes the model's layout (its layers wrap the Linear ones): last, on the same setup
        pst = build_method(OmegaConf.create({"name": "pst"}))
        setup.reset()
        t, trainer = fit(setup, pst, tmp, reset=False)
        pst_bytes = optimizer_state_bytes(trainer.optimizer)
        out.update(
            pst_step_s=t, pst_trainable=pst.trainable_count(), pst_trainable_fraction=pst.trainable_count() / total,
            pst_optimizer_state_bytes=pst_bytes, pst_optimizer_state_ratio_vs_movement=pst_bytes / movement_bytes,
        )
    speedup, info = nm_linear_speedup()
    out["nm_2_4_linear_speedup"] = speedup
    out.update(info)
    out["pruning_bench_setup"] = (f"minilm, MRPC train batches of {args.batch_size}, {steps} steps x {args.repeats} alternating repeats "
                                  f"(dense vs magnitude 0.9, cubic schedule over the {steps} steps); CPU threads={torch.get_num_threads()}")
    return out


if __name__ == "__main__":  # python -m sparse_ft.bench.pruning: this group alone, printed
    import argparse
    import json

    from .harness import DEFAULT_GLUE

    parser = argparse.ArgumentParser()
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nm-only", action="store_true", help="only the 2:4 linear speedup (needs CUDA)")
    a = parser.parse_args()
    result = dict(zip(("nm_2_4_linear_speedup", "info"), nm_linear_speedup())) if a.nm_only else bench_pruning(a)
    print(json.dumps(result, indent=2, default=str))
