"""`job=evaluate source=<run dir | model.safetensors>`: score saved weights on a task, no training.
With a run directory the task, model, method and trainer settings are the run's (config/source.py), so
the figures equal that run's final metrics and summary.json names the source's method (a weights
file: `method: null`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core.accounting import dense_fp32_bytes, storage_block
from ..core.errors import ConfigError
from ..train import distributed as D
from ..train.evaluator import Evaluator
from .context import RunContext, seed_everything
from .data import build_setup
from ..config.source import source_method, source_run_dir, weights_of

log = logging.getLogger("sparse_ft.jobs.entry")


def load_weights_into(module: torch.nn.Module, path: Path) -> None:
    """Load a safetensors file whose keys must be exactly the model's (an error names the file,
    also for a truncated or corrupted one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ConfigError("source", f"{path}: not a readable safetensors file ({err}): it is truncated or corrupted "
                                    "(an interrupted copy?); copy it again or point source= at the run directory") from None
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ConfigError("source", f"{path}: its keys do not match model {type(module).__name__}: "
                                    f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}")
    for name, t in module.state_dict().items():
        if weights[name].shape != t.shape:
            raise ConfigError("source", f"{path}: {name} has shape {tuple(weights[name].shape)}, the model's is {tuple(t.shape)}")
    module.load_state_dict(weights)


def evaluate_job(rc: RunContext) -> float | None:
    cfg, summary = rc.cfg, rc.summary
    path = weights_of(cfg)
    run = source_run_dir(cfg)
    # the weights are the source run's method's (adopt_source took its method); a bare weights file's method is unknown
    summary["source"] = {"path": str(cfg.source), "weights": str(path), "method": source_method(run)}
    if run is None:
        summary["method"] = None
    dist_info, device = D.setup(cfg.trainer.device, float(cfg.trainer.get("dist_timeout_s", 300)))
    with rc.monitored(device) as telemetry:
        seed_everything(cfg.seed)
        setup = build_setup(cfg, telemetry, device)
        summary["data"] = {**setup.task.sizes(), "majority_class_score": setup.task.majority_class_scores()}
        if setup.task.info.get("not_available"):  # NLG metrics this machine cannot compute, each with why
            summary["metrics_not_available"] = dict(setup.task.info["not_available"])
        load_weights_into(setup.bundle.module, path)
        evaluator = Evaluator(setup.bundle, setup.task, setup.features, device, cfg.trainer.eval_batch_size, dist_info)
        with telemetry.phase("eval"):
            final = evaluator.final_metrics()
        rc.writer.log_metrics({"type": "final", "step": 0, **final})
        summary["metrics"] = final
        if cfg.trainer.get("measure_inference") and dist_info.is_main:
            summary["inference"] = evaluator.measure_inference(setup.task.eval_splits[0], int(cfg.trainer.inference_examples), telemetry.phase)
        module = setup.bundle.module
        total = sum(p.numel() for p in module.parameters())
        summary["params"] = {"total": total, "trainable": 0, "updated": None, "added": 0}
        summary["storage"] = storage_block(rc.run_dir, dense_fp32_bytes(module), {"source_weights": path.stat().st_size})
        summary["time"] = rc.time_block(0, 0, 0, 0)
        summary["memory"] = telemetry.resources.memory_block()
        log.info("evaluated %s: %s", path, final[setup.task.eval_splits[0]])
        return float(final["main"])
