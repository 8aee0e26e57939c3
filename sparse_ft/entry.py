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


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def previous_result(run_dir: Path) -> float | None:
    """A completed run in this directory (a requeued or re-launched sweep job): its main metric."""
    import json

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") != "completed":
        return None
    return (summary.get("metrics") or {}).get("main", float("nan"))


def find_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    from .train.checkpoint import find_checkpoint

    mode = cfg.trainer.get("resume", "auto")
    if mode in (None, "never"):
        return None
    if mode == "auto":
        return find_checkpoint(run_dir)
    found = find_checkpoint(Path(str(mode)))
    if found is None:
        raise ConfigError("trainer.resume", f"no resumable checkpoint (checkpoints/last/manifest.json) at {mode}")
    return found


def run(cfg: DictConfig) -> float | None:
    """Run one job; returns the main validation metric (what a Hydra sweeper optimises).

    Single run: an error exits non-zero (2 for bad input, with the message). Multirun: the job's
    error is recorded in its summary.json and run.log and the sweep goes on; the sweep's exit
    status reports failed jobs at the end (callbacks.SweepExitStatus).
    """
    from .models.text import ModelLoadError
    from .tasks.base import DataError
    from .train import distributed as D
    from .train.checkpoint import CheckpointError
    from .train.preemption import Preempted

    user_errors = USER_ERRORS + (DataError, ModelLoadError, CheckpointError)
    started = time.perf_counter()
    run_dir = run_dir_of(cfg)
    dist_info = D.env_info()
    if not dist_info.is_main:  # one voice in the console and run.log: rank 0's
        logging.getLogger("sparse_ft").setLevel(logging.WARNING)
    if cfg.trainer.get("resume", "auto") == "auto" and dist_info.is_main:
        done = previous_result(run_dir)
        if done is not None:
            log.info("%s already holds a completed run: not training again", run_dir)
            return done
    writer = RunWriter(run_dir, enabled=dist_info.is_main)
    if dist_info.is_main:
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
    from .loggers import build_logger
    from .loggers.base import NullLogger

    logger = NullLogger()
    try:
        validate(cfg)  # before any data or weights are touched
        if dist_info.is_main:
            logger = build_logger(cfg, run_dir)
            writer.listeners.append(logger.log)
        result = _run(cfg, run_dir, writer, summary)
        summary["status"] = "completed"
        return result
    except Preempted as err:
        summary["status"] = "interrupted"
        summary["error"] = str(err)
        log.warning("%s", err)
        raise SystemExit(err.exit_code) from err
    except user_errors as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        log.error("%s", err)
        if is_multirun():
            return None
        raise SystemExit(2) from err
    except KeyboardInterrupt as err:
        summary["status"] = "interrupted"
        summary["error"] = "KeyboardInterrupt"
        raise
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {err}"
        log.exception("run failed: %s", err)
        if is_multirun():
            return None
        raise
    finally:
        summary.setdefault("time", {}).setdefault("wall_s", {})["total"] = time.perf_counter() - started
        summary["versions"] = versions()
        summary["git_commit"] = git_commit()
        if dist_info.is_main:
            summary.update(logger.status)
            writer.write_summary(summary)
            log.info("%s: %s", summary["status"], run_dir / "summary.json")
            _mirror_to_logger(logger, summary, run_dir)
        writer.close()
        D.teardown()


def _mirror_to_logger(logger, summary: dict, run_dir: Path) -> None:
    """The summary and the energy samples go to the tracker too; then the tracker's run ends
    (with an exit code, also on failure, so multirun jobs never merge into one W&B run)."""
    import csv

    logger.log_summary(summary)
    energy_csv = run_dir / "energy.csv"
    if energy_csv.is_file():
        with open(energy_csv, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            logger.log_series("energy", rows)
    logger.finish(0 if summary["status"] == "completed" else 1)


def _run(cfg: DictConfig, run_dir: Path, writer: RunWriter, summary: dict) -> float | None:
    from .methods import MethodContext, build_method
    from .models import build_model
    from .tasks import load_task
    from .telemetry.resources import ResourceMonitor
    from .train import distributed as D
    from .train.checkpoint import read_checkpoint_dir, save_tensors
    from .train.trainer import Trainer

    dist_info, device = D.setup(cfg.trainer.device, float(cfg.trainer.get("dist_timeout_s", 300)))
    dist_cfg = cfg.get("distributed")
    local_sgd = dist_cfg is not None and dist_cfg.get("mode", "none") == "local_sgd"
    sparse_ckpt = bool(cfg.trainer.get("sparse_checkpoints", False))
    if local_sgd and dist_cfg.get("total_batch_size") is not None:  # same total batch for every M
        total_batch = int(dist_cfg.total_batch_size)
        if total_batch % dist_info.world_size:
            raise ConfigError("distributed.total_batch_size", f"{total_batch} is not divisible by the {dist_info.world_size} workers")
        cfg.trainer.batch_size = total_batch // dist_info.world_size
    resume_from = find_resume(cfg, run_dir)
    if resume_from is not None and (local_sgd or sparse_ckpt):
        raise ConfigError("trainer.resume", f"{resume_from}: resuming a distributed=local_sgd or trainer.sparse_checkpoints run is not supported yet (use trainer.resume=never)")
    resume = None
    if resume_from is not None:
        tensors, objects, info = read_checkpoint_dir(resume_from)  # verified before anything trains
        resume = {"tensors": tensors, "objects": objects, "info": info, "path": str(resume_from)}
        summary["resumed_from"] = {"path": str(resume_from), "step": info.get("step")}
        writer.truncate_after(int(info.get("step", 0)))
    resources = ResourceMonitor(device)
    energy = start_energy(cfg, run_dir) if dist_info.is_main else None
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
        if resume is not None:
            module.load_state_dict(resume["tensors"]["model.safetensors"])
            # the method gets its saved state (masks, scores) before prepare, which then reuses it
            method.load_state_dict(resume["objects"]["trainer_state.pt"]["method"])
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
            # local SGD: a masked method trains densely through the warm-up and selects its
            # mask when the trainer calls refresh_mask() at the end of it
            extra={"dist": dist_info, "resumed": resume is not None, "defer_mask": local_sgd and int(dist_cfg.warmup_epochs) > 0},
        )
        method.prepare(module, ctx)
        hooks, checkpointer = [], None
        if sparse_ckpt and dist_info.is_main:
            from .sparse_checkpoints import SparseCheckpointer

            checkpointer = SparseCheckpointer(run_dir, module, dense_copies=bool(cfg.trainer.get("sparse_checkpoints_dense", False)))
            checkpointer.write_base()
            hooks.append(lambda epoch, step: checkpointer.save(epoch, step))
        trainer = Trainer(
            cfg.trainer, bundle, task, method, features, device, cfg.seed, writer.log_metrics, telemetry.phase,
            checkpoint_dir=run_dir / "checkpoints", dist_info=dist_info, resume_state=resume,
            distributed_cfg=dist_cfg, epoch_hooks=hooks,
        )
        state = trainer.fit()
        if trainer.local is not None:
            summary["communication"] = {**trainer.local.summary(), "per_worker_batch": int(cfg.trainer.batch_size), "total_batch": int(cfg.trainer.batch_size) * dist_info.world_size}
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
                preds, _ = trainer.predictions(split)  # collective under torchrun
                if dist_info.is_main:
                    write_submission(task, split, preds, run_dir / "predictions")

        if cfg.trainer.get("measure_inference") and dist_info.is_main:
            summary["inference"] = trainer.measure_inference(task.eval_splits[0], int(cfg.trainer.inference_examples), telemetry.phase)
            summary["inference"]["peak_bytes"] = resources.peak_bytes.get("inference")

        if not dist_info.is_main:  # ranks hold identical weights; rank 0 writes the artifacts
            return float(final["main"])
        method_storage = method.finalize(module, run_dir) or {}
        if cfg.trainer.save_final:
            save_tensors(module.state_dict(), run_dir / "checkpoints" / "final" / "model.safetensors", {"model": str(bundle.source)})
        updated = count_updated(module, initial)
        summary["params"] = param_block(module, method.trainable_count(), updated)
        summary["storage"] = storage_block(run_dir, dense_fp32_bytes(module), method_storage)
        if checkpointer is not None:
            summary["storage"]["sparse_checkpoints"] = checkpointer.summary()
        if trainer.local is not None:
            from .train.local_sgd import plot_accuracy_vs_communication

            plot_accuracy_vs_communication(run_dir)
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
