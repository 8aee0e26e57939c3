"""One run: config → task data → model → method → trainer → evaluation → results → loggers.

`run(cfg)` is what `run.py` calls inside `@hydra.main`. Whatever happens, the run directory ends
with a `summary.json` whose `status` says how the run ended; a run that has not finished has none.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .accounting import count_updated, dense_fp32_bytes, param_block, snapshot, storage_block
from .config import ConfigError, task_modality, validate
from .results import RunWriter

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError,)  # extended below with DataError / ModelLoadError (imported lazily)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_dir_of(cfg: DictConfig) -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("run_dir") or "outputs/adhoc")


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import datasets
    import hydra
    import omegaconf
    import transformers

    return {
        "sparse_ft": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def start_energy(cfg: DictConfig, run_dir: Path):
    from .telemetry.energy import EnergyMonitor

    monitor = EnergyMonitor(cfg.energy, run_dir)
    monitor.start()
    return monitor


class Telemetry:
    """Opens one phase on every monitor at once (time/memory and energy)."""

    def __init__(self, resources, energy):
        self.resources, self.energy = resources, energy

    @contextlib.contextmanager
    def phase(self, name: str):
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.resources.phase(name))
            if self.energy is not None:
                stack.enter_context(self.energy.phase(name))
            yield


def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main validation metric (what a Hydra sweeper optimises)."""
    from .tasks.base import DataError
    from .models.text import ModelLoadError

    user_errors = USER_ERRORS + (DataError, ModelLoadError)
    started = time.perf_counter()
    run_dir = run_dir_of(cfg)
    writer = RunWriter(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    summary = {
        "status": "failed",
        "task": cfg.task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "experiment": cfg.get("name"),
        "run_dir": str(run_dir),
    }
    try:
        validate(cfg)  # before any data or weights are touched
        result = _run(cfg, run_dir, writer, summary)
        summary["status"] = "completed"
        return result
    except user_errors as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        log.error("%s", err)
        raise SystemExit(2) from err
    except BaseException as err:
        summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary["error"] = f"{type(err).__name__}: {err}"
        log.exception("run failed")
        raise
    finally:
        summary.setdefault("time", {}).setdefault("wall_s", {})["total"] = time.perf_counter() - started
        summary["versions"] = versions()
        summary["git_commit"] = git_commit()
        writer.write_summary(summary)
        writer.close()
        log.info("%s: %s", summary["status"], run_dir / "summary.json")


def _run(cfg: DictConfig, run_dir: Path, writer: RunWriter, summary: dict) -> float | None:
    from .methods import MethodContext, build_method
    from .models import build_model
    from .tasks import load_task
    from .telemetry.resources import ResourceMonitor
    from .train.checkpoint import save_tensors
    from .train.trainer import Trainer, resolve_device

    device = resolve_device(cfg.trainer.device)
    resources = ResourceMonitor(device)
    energy = start_energy(cfg, run_dir)
    telemetry = Telemetry(resources, energy)
    try:
        seed_everything(cfg.seed)
        method = build_method(cfg.method)
        with telemetry.phase("setup"):
            task = load_task(cfg.task, cfg.seed)
            summary["data"] = task.sizes()
            bundle = build_model(cfg.model, task, max_length=int(cfg.task.get("max_length", 128)))
            splits = {task.train_split, *task.eval_splits, *([task.test_split] if task.test_split else [])}
            if cfg.trainer.predict == "test":
                splits |= {s for s in task.splits if s.startswith("test")}
            features = {s: bundle.encode(task, s) for s in sorted(splits) if s in task.splits}
        log.info("task %s: %s | model %s from %s", task.name, task.sizes(), bundle.name, bundle.source)
        module = bundle.module.to(device)
        initial = snapshot(module)
        ctx = MethodContext(
            run_dir=run_dir,
            device=device,
            seed=cfg.seed,
            train_features=features[task.train_split],
            collate=bundle.collate,
            loss=bundle.loss,
            phase=telemetry.phase,
            per_example_loss=bundle.per_example_loss,
            logits=bundle.logits if bundle.logits_fn is not None else None,
        )
        method.prepare(module, ctx)
        trainer = Trainer(cfg.trainer, bundle, task, method, features, device, cfg.seed, writer.log_metrics, telemetry.phase)
        state = trainer.fit()

        with telemetry.phase("eval"):
            final = {s: trainer.evaluate(s) for s in task.eval_splits if features.get(s)}
            if task.test_split and task.has_labels(task.test_split):
                final["test"] = trainer.evaluate(task.test_split)
        final["main"] = final[task.eval_splits[0]]["main"]
        writer.log_metrics({"type": "final", "step": state.step, **{k: v for k, v in final.items()}})
        summary["metrics"] = final
        summary["best"] = {"step": state.best_step, "main": state.best_main, "metrics": state.best_metrics}

        if cfg.trainer.predict == "test":
            from .tasks.glue import write_submission

            for split in sorted(s for s in features if s.startswith("test")):
                preds, _ = trainer.predictions(split)
                write_submission(task, split, preds, run_dir / "predictions")

        method_storage = method.finalize(module, run_dir) or {}
        if cfg.trainer.save_final:
            save_tensors(module.state_dict(), run_dir / "checkpoints" / "final" / "model.safetensors", {"model": str(bundle.source)})
        updated = count_updated(module, initial)
        summary["params"] = param_block(module, method.trainable_count(), updated)
        summary["storage"] = storage_block(run_dir, dense_fp32_bytes(module), method_storage)
        summary["method_report"] = method.report()
        train_s = resources.seconds.get("train", 0.0)
        summary["time"] = {
            "wall_s": dict(resources.seconds),
            "steps": state.step,
            "epochs_completed": state.epoch,
            "train_samples": state.samples,
            "train_samples_per_s": state.samples / train_s if train_s else None,
            "train_tokens_per_s": state.tokens / train_s if train_s and state.tokens else None,
        }
        summary["memory"] = resources.memory_block()
        log.info(
            "trainable params: %d || all params: %d || trainable%%: %.4f || updated: %d",
            summary["params"]["trainable"], summary["params"]["total"], 100 * summary["params"]["trainable_fraction"], updated,
        )
        log.info("final %s: %s", task.eval_splits[0], final[task.eval_splits[0]])
        return float(final["main"])
    finally:
        summary["energy"] = energy.stop() if energy is not None else {"available": False, "reason": "not started"}
        summary.setdefault("memory", resources.memory_block())
