"""Where a run is, as `checkpoints/last/` holds it: the trainer's position (weights, loop state,
optimizer, schedule, scaler, method and callback states, every RNG, the callbacks' extra files),
written atomically by rank 0 (`save_last`) and put back on a resume (`restore`). The Trainer's
`position` / `save_last` call these with themselves (`trainer`: a train.trainer.Trainer, not imported:
the trainer imports this module); the file format itself is checkpoint.py's."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from . import distributed as D
from .callbacks import callback_key
from .checkpoint import Resume, TrainerCheckpoint, write_last
from .state import TrainState, clone_tree, rng_state, set_rng_state

log = logging.getLogger("sparse_ft.train.trainer")  # the messages a run's log has always shown under the trainer


def position(trainer: Any, copy: bool = False) -> dict:
    """Where this rank's run is now, as checkpoints/last holds it: weights, loop state,
    optimizer, schedule, method and callback state, every RNG (`trainer_state`: a
    TrainerCheckpoint), and the callbacks' extra files (`files`: name -> tensors when written).
    `copy`: detached copies, so a callback can keep it in memory (local SGD keeps the one of its
    last sync round)."""
    checkpoint = TrainerCheckpoint(
        state=dataclasses.asdict(trainer.state),
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        scaler=trainer.scaler.state_dict(),
        method=trainer.method.state_dict(),
        rng=rng_state(),
        job=trainer.job_state(),
    )
    checkpoint.with_callback_states({callback_key(cb): state for cb in trainer.callbacks if (state := cb.state_dict()) is not None})
    weights = trainer.bundle.module.state_dict()
    if copy:
        checkpoint = TrainerCheckpoint(**clone_tree(vars(checkpoint)))  # (asdict would deep-copy every tensor once more)
        weights = {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    files = {name: get for cb in trainer.callbacks for name, get in cb.checkpoint_files(trainer, copy).items()}
    return {"weights": weights, "files": files, "trainer_state": checkpoint}


def save_last(trainer: Any) -> None:
    """checkpoints/last/, written atomically by rank 0. Usually the ranks hold identical
    weights now; a callback may instead offer an earlier `resume_point` where they did (local
    SGD: its last sync round), and then every rank's own optimizer, RNG and loop state go into
    the checkpoint too (`workers`, one entry per rank)."""
    if trainer.checkpoint_dir is None:
        return
    point = None
    for cb in trainer.callbacks:
        point = cb.resume_point(trainer) or point
    if point is None:
        trainer.sync_ranks()
        point = trainer.position() if trainer.dist.is_main else None
    else:
        mine = point["trainer_state"]
        workers = D.gather_to_main(mine.worker_part())
        if trainer.dist.is_main:
            point = {**point, "trainer_state": dataclasses.replace(mine, workers=workers)}
    if trainer.dist.is_main:
        files = {name: tensors for name, get in point["files"].items() if (tensors := get()) is not None}
        st = point["trainer_state"].state
        info = {"step": st["step"], "epoch": st["epoch"], "stage": st["stage"], **trainer.checkpoint_info}
        write_last(trainer.checkpoint_dir / "last", point["weights"], point["trainer_state"], files, info)
        log.info("checkpoint: %s (step %d)", trainer.checkpoint_dir / "last", info["step"])
    D.barrier()


def restore(trainer: Any, resume: Resume) -> None:
    """Loop state, optimizer, schedule, scaler, callback states and files, and every RNG from `resume`
    (the weights and the method state are loaded before the trainer is built)."""
    saved = resume.trainer
    own = saved.own(trainer.dist.rank)  # written at a local-SGD round: this rank's own part
    trainer.state = TrainState(**own["state"])
    trainer.optimizer.load_state_dict(own["optimizer"])
    trainer.scheduler.load_state_dict(saved.scheduler)
    trainer.scaler.load_state_dict(saved.scaler)
    for cb in trainer.callbacks:
        if saved.has_callback_state(callback_key(cb)):
            cb.load_state_dict(saved.callback_state(callback_key(cb)))
        cb.load_checkpoint_files(resume.tensors)
    set_rng_state(own["rng"])
    log.info("resumed at optimizer step %d (epoch %d, %d batches into it)", trainer.state.step, trainer.state.epoch, trainer.state.epoch_batches)
