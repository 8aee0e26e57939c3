"""`job=train` (the default): config → task data → model → method (wrap, prepare) → one Trainer per
stage → final evaluation → method.finalize / export → results → loggers."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from omegaconf import OmegaConf

from ..core.accounting import InitialWeights, dense_fp32_bytes, optimizer_block, param_block, storage_block
from ..core.errors import ConfigError
from ..methods import MethodContext, build_method
from ..methods.base import Staged, stages_of
from ..train import distributed as D
from ..train.callbacks import CallbackSetup
from ..train.callbacks.registry import build_callbacks, check_resume
from ..core.io import save_tensors
from ..train.checkpoint import Resume, read_resume
from ..train.state import steps_per_epoch, total_steps
from ..train.trainer import Trainer
from .context import RunContext, seed_everything
from .data import build_setup
from .resume import find_resume  # noqa: F401  (checked by RunContext before anything loads)

log = logging.getLogger("sparse_ft.jobs.entry")

INITIAL_FILE = ".initial_weights.pt"  # the base model's initial parameters while the job runs (deleted at its end)


def check_resume_fits(resume: Resume, setup: CallbackSetup, world_size: int) -> None:
    """A run resumes only from a checkpoint that holds its callbacks' state (a local-SGD run's
    round counters, a sparse-checkpoint run's count: callbacks/__init__.py check_resume) and, at
    a local-SGD round, one entry per worker of this launch."""
    check_resume(setup, resume.trainer, resume.path)
    workers = resume.trainer.workers
    if workers is not None and len(workers) != world_size:
        raise ConfigError("trainer.resume", f"{resume.path} holds the state of {len(workers)} local-SGD workers; resume it with torchrun --nproc_per_node={len(workers)}, not {world_size}")


MERGED_BLOCKS = ("storage",)  # summary.json blocks the job writes itself; a callback's block of that name is merged into it


def stage_trainer_cfg(trainer_cfg, overrides: dict):
    """The trainer config of one stage: the run's, with the stage's own keys on top."""
    if not overrides:
        return trainer_cfg
    merged = OmegaConf.merge(trainer_cfg, OmegaConf.create(dict(overrides)))
    return merged


def train_job(rc: RunContext) -> float | None:
    cfg, run_dir, writer, summary = rc.cfg, rc.run_dir, rc.writer, rc.summary
    dist_info, device = D.setup(cfg.trainer.device, float(cfg.trainer.get("dist_timeout_s", 300)))
    dist_cfg = cfg.get("distributed")
    local_sgd = dist_cfg is not None and dist_cfg.get("mode", "none") == "local_sgd"
    resume_from = find_resume(cfg, run_dir)
    resume = None
    callback_setup = CallbackSetup(trainer_cfg=cfg.trainer, distributed_cfg=dist_cfg, dist_info=dist_info, run_dir=run_dir,
                                   checkpoint_dir=run_dir / "checkpoints", resumed=resume_from is not None)
    if resume_from is not None:
        resume = read_resume(resume_from)  # verified before anything trains
        check_resume_fits(resume, callback_setup, dist_info.world_size)
        summary["resumed_from"] = {"path": str(resume_from), "step": resume.info.get("step"), "stage": resume.info.get("stage", 0)}
        if rc.resume is not None:  # what the pre-flight check found: settings that differ, forced or allowed
            summary["resume"] = {k: rc.resume[k] for k in ("forced", "differing", "allowed")}
        writer.truncate_after(resume.step, resume.stage)
    with rc.monitored(device) as telemetry, contextlib.ExitStack() as cleanup:
        seed_everything(cfg.seed)
        method = build_method(cfg.method)
        setup = build_setup(cfg, telemetry, device, test_splits=cfg.trainer.predict == "test")
        task, features = setup.task, setup.features
        summary["data"] = {**task.sizes(), "majority_class_score": task.majority_class_scores()}
        if task.info.get("not_available"):  # NLG metrics this machine cannot compute, each with why
            summary["metrics_not_available"] = dict(task.info["not_available"])
        base = setup.bundle.module
        # the initial weights for params.updated: on disk, memory-mapped when counted (none resident)
        initial = InitialWeights(base, run_dir / INITIAL_FILE) if dist_info.is_main else None
        if initial is not None:
            cleanup.callback(initial.close)  # also when the job fails
        base_total = sum(p.numel() for p in base.parameters())
        dense_bytes = dense_fp32_bytes(base)
        train_size = len(features[task.train_split])
        ctx = MethodContext(
            run_dir=run_dir,
            device=device,
            seed=cfg.seed,
            train_features=features[task.train_split],
            collate=setup.bundle.collate,
            loss=setup.bundle.loss,
            phase=telemetry.phase,
            per_example_loss=setup.bundle.per_example_loss,
            logits=setup.bundle.logits if setup.bundle.logits_fn is not None else None,
            total_steps=total_steps(cfg.trainer, train_size, dist_info.world_size),
            steps_per_epoch=steps_per_epoch(cfg.trainer, train_size, dist_info.world_size),
            model_cfg=cfg.model,
            bundle=setup.bundle,
            world_size=dist_info.world_size,
            local_sgd=local_sgd,
            # local SGD: a masked method trains densely through the warm-up and selects its
            # mask when the trainer calls refresh_mask() at the end of it
            defer_mask=local_sgd and int(dist_cfg.warmup_epochs) > 0,
        )
        bundle = method.wrap(setup.bundle, ctx)
        bundle.module.to(device)
        # prepare and the stages see the bundle wrap returned (a new frozen context, never re-bound)
        ctx = replace(ctx, bundle=bundle, loss=bundle.loss, per_example_loss=bundle.per_example_loss,
                      logits=bundle.logits if bundle.logits_fn is not None else None)
        if resume is not None:
            bundle.module.load_state_dict(resume.weights)
        # a resumed run hands prepare the method's saved state (masks, scores), which it reuses
        method.prepare(bundle.module, ctx, resumed=resume.trainer.method if resume is not None else None)
        trainable = method.trainable_count()
        log.info("trainable params: %d || all params: %d || trainable%%: %.4f", trainable, base_total, 100 * trainable / max(base_total, 1))
        # local SGD, sparse checkpoints, the user's, the NaN check, periodic checkpoints, the best
        # checkpoint, early stopping: each as its config enables it (train/callbacks/)
        callbacks = build_callbacks(replace(callback_setup, module=bundle.module))

        stages = stages_of(method)
        start = resume.stage if resume is not None else 0
        done: list[dict] = resume.trainer.stages_done if resume is not None else []
        if start >= len(stages):
            raise ConfigError("trainer.resume", f"{resume_from}: checkpoint of stage {start}, but method {method.name} has {len(stages)} stage(s)")
        trainer = None
        totals = {"steps": 0, "epochs": 0, "samples": 0, "tokens": 0}
        for r in done:
            for k in totals:
                totals[k] += r.get(k, 0)
        for index in range(start, len(stages)):
            stage = stages[index]
            stage_cfg = stage_trainer_cfg(cfg.trainer, stage.overrides)
            stage_ctx = replace(ctx, total_steps=total_steps(stage_cfg, train_size, dist_info.world_size),
                                steps_per_epoch=steps_per_epoch(stage_cfg, train_size, dist_info.world_size))
            resuming_here = resume is not None and index == start
            if not resuming_here and isinstance(method, Staged):
                method.begin_stage(index, stage, stage_ctx)
            if len(stages) > 1:
                log.info("stage %d/%d: %s (%d optimizer steps)", index + 1, len(stages), stage.name, stage_ctx.total_steps)
            trainer = Trainer(
                stage_cfg, bundle, task, method, features, device, cfg.seed, writer.log_metrics, telemetry.phase,
                checkpoint_dir=run_dir / "checkpoints", dist_info=dist_info, resume_state=resume if resuming_here else None,
                callbacks=callbacks, stage=index, job_state=lambda: {"stages": list(done)},
            )
            trainer.checkpoint_info = {"config": rc.resolved_config}  # in the manifest: what a resume compares its settings with
            state = trainer.fit()
            result = {"index": index, "name": stage.name, "steps": state.step, "epochs": state.epoch, "samples": state.samples,
                      "tokens": state.tokens, "best": {"step": state.best_step, "main": state.best_main, "metrics": state.best_metrics}}
            if isinstance(method, Staged):
                method.end_stage(index, stage, result)
            done.append(result)
            for k in totals:
                totals[k] += result[k]
        # the callbacks' summary.json blocks, as training left them: early_stopping
        # (stopped_early_at_step: null = ran every step), communication (local SGD),
        # storage.sparse_checkpoints (merged into the job's own storage block)
        blocks: dict = {}
        for cb in callbacks:
            blocks.update(cb.summary_blocks(trainer))
        with telemetry.phase("eval"):
            final = trainer.evaluator.final_metrics()
        writer.log_metrics({"type": "final", "stage": len(stages) - 1, "step": state.step, **final})
        summary["metrics"] = final
        summary["best"] = dict(done[-1]["best"])
        summary.update({key: block for key, block in blocks.items() if key not in MERGED_BLOCKS})
        summary["optimizer"] = optimizer_block(trainer.optimizer)
        if len(stages) > 1:
            summary["stages"] = done

        if cfg.trainer.predict == "test":
            from ..tasks.glue import write_submission

            for split in sorted(s for s in features if s.startswith("test")):
                preds, _ = trainer.predictions(split)  # collective under torchrun
                if dist_info.is_main:
                    write_submission(task, split, preds, run_dir / "predictions")

        if cfg.trainer.get("measure_inference") and dist_info.is_main:
            trainer.release_training_state()  # inference figures from a clean state (no optimizer state, no gradients)
            summary["inference"] = trainer.evaluator.measure_inference(task.eval_splits[0], int(cfg.trainer.inference_examples), telemetry.phase)
            summary["inference"]["peak_bytes"] = telemetry.resources.peak_bytes.get("inference")

        if not dist_info.is_main:  # ranks hold identical weights; rank 0 writes the artifacts
            return float(final["main"])
        method_storage = method.finalize(bundle.module, run_dir) or {}
        exported = method.export(bundle.module)
        if cfg.trainer.save_final:
            save_tensors(exported, run_dir / "checkpoints" / "final" / "model.safetensors", {"model": str(bundle.source)})
        updated = initial.count_updated(exported)
        initial.close()
        summary["params"] = param_block(base_total, method.trainable_count(), updated, method.added_count())
        summary["params"].update(method.param_bases(base_total))  # e.g. trainable_fraction_mvp_basis (pruning)
        summary["storage"] = storage_block(run_dir, dense_bytes, method_storage)
        for key in MERGED_BLOCKS:
            if key in blocks:
                summary[key].update(blocks[key])
        for cb in callbacks:
            cb.finish(run_dir)
        summary["method_report"] = method.report()
        for key, block in method.summary_blocks().items():
            summary.setdefault(key, block)
        summary["time"] = rc.time_block(totals["steps"], totals["epochs"], totals["samples"], totals["tokens"])
        summary["memory"] = telemetry.resources.memory_block()
        p = summary["params"]
        log.info("trainable params: %d || all params: %d || trainable%%: %.4f || updated: %d || added: %d",
                 p["trainable"], p["total"], 100 * p["trainable_fraction"], updated, p["added"])
        log.info("final %s: %s", task.eval_splits[0], final[task.eval_splits[0]])
        return float(final["main"])
