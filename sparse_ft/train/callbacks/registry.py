"""Which callbacks a run has: `REGISTRY`, one entry per built-in callback with the config keys
that enable it, in the order the trainer calls them (the user's own `trainer.callbacks` where
`user` stands). The order matters: local SGD finishes its round before anything reads the weights,
the user's callbacks see a stage's end before the best checkpoint is restored, the best is kept
before early stopping logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .sparse_checkpoints import SparseCheckpointer
from ..local_sgd import LocalSGDCallback
from ..state import parse_every
from . import CallbackSetup, TrainerCallback, build_user_callbacks, builtin


@dataclass(frozen=True)
class CallbackSpec:
    """A built-in callback: the config keys that enable it, how it is built, and (for one whose
    state a resume cannot do without) the error when a checkpoint lacks that state."""

    name: str
    keys: tuple[str, ...]
    enabled: Callable[[CallbackSetup], bool]
    build: Callable[[CallbackSetup], TrainerCallback]
    state_key: str | None = None
    resume_error: tuple[str, str] | None = None  # (config key, message with {path})


def _local_sgd(setup: CallbackSetup) -> TrainerCallback:
    return LocalSGDCallback(setup.distributed_cfg, setup.dist_info, setup.module)


def _sparse_checkpoints(setup: CallbackSetup) -> TrainerCallback:
    # on every rank (epoch ends stay collective); rank 0 writes
    checkpointer = SparseCheckpointer(setup.run_dir, setup.module, dense_copies=bool(setup.trainer_cfg.get("sparse_checkpoints_dense", False)),
                                      write=setup.dist_info.is_main if setup.dist_info is not None else True)
    if not setup.resumed:  # a resumed run keeps its base; the trainer restores the count
        checkpointer.write_base()
    return checkpointer


def _every(setup: CallbackSetup) -> bool:
    return parse_every(setup.trainer_cfg.get("checkpoint_every", 0)) != (0, 0.0)


USER = "user"  # where the user's own callbacks (`trainer.callbacks`) go in the order

REGISTRY: tuple[CallbackSpec, ...] = (
    CallbackSpec("local_sgd", ("distributed.mode", "distributed.local_steps", "distributed.warmup_epochs", "distributed.reduce",
                               "distributed.eval_at", "distributed.sync_buffers"),
                 lambda s: s.distributed_cfg is not None and s.distributed_cfg.get("mode", "none") == "local_sgd", _local_sgd,
                 state_key="LocalSGDCallback",
                 resume_error=("distributed.mode", "{path} was not written by a distributed=local_sgd run (resume it as it was launched, "
                                                   "or start over with trainer.resume=never)")),
    CallbackSpec("sparse_checkpoints", ("trainer.sparse_checkpoints", "trainer.sparse_checkpoints_dense"),
                 lambda s: bool(s.trainer_cfg.get("sparse_checkpoints", False)), _sparse_checkpoints,
                 state_key="sparse_checkpoints",
                 resume_error=("trainer.sparse_checkpoints", "{path} was written by a run without sparse checkpoints: its deltas would "
                               "not start from this run's base (resume with trainer.sparse_checkpoints=false, or start over with "
                               "trainer.resume=never)")),
    CallbackSpec(USER, ("trainer.callbacks",), lambda s: True, lambda s: None),  # placeholder: build_user_callbacks
    CallbackSpec("nan_check", (), lambda s: True, lambda s: builtin.NanCheck()),
    CallbackSpec("periodic_checkpoint", ("trainer.checkpoint_every",), lambda s: s.checkpoint_dir is not None and _every(s),
                 builtin.PeriodicCheckpoint),
    CallbackSpec("best_checkpoint", ("trainer.select_best", "trainer.select_best_store"), lambda s: bool(s.trainer_cfg.get("select_best", False)),
                 builtin.BestCheckpoint),
    CallbackSpec("early_stopping", ("trainer.early_stopping_patience",), lambda s: True, builtin.EarlyStopping),
)


def build_callbacks(setup: CallbackSetup, user: bool = True) -> list[TrainerCallback]:
    """The run's callbacks, in REGISTRY order (the user's own where `user` stands)."""
    callbacks: list[TrainerCallback] = []
    for spec in REGISTRY:
        if spec.name == USER:
            if user:
                callbacks.extend(build_user_callbacks(setup.trainer_cfg.get("callbacks")))
        elif spec.enabled(setup):
            callbacks.append(spec.build(setup))
    return callbacks


def check_resume(setup: CallbackSetup, checkpoint, path: str) -> None:
    """A run resumes only from a checkpoint that holds the state of every callback it needs
    (local SGD's round counters, the sparse checkpoint count): ConfigError naming the key."""
    from ...core.errors import ConfigError

    for spec in REGISTRY:
        if spec.resume_error is not None and spec.enabled(setup) and not checkpoint.has_callback_state(spec.state_key):
            key, message = spec.resume_error
            raise ConfigError(key, message.format(path=path))
