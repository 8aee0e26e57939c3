"""The training loop. It knows no method and no architecture by name: the method decides what the
optimizer sees and reacts at a few hook points; the model bundle turns batches into a loss or
predictions; telemetry phases ("train", "eval") are opened through a callable from outside.

Resumable: `checkpoints/last/` holds weights, optimizer, scheduler, scaler, method state, every
RNG and the position in the epoch's data order, so a resumed CPU run ends bit-identical to an
uninterrupted one. Under torchrun the module is wrapped in DDP and each rank trains on its own
shard of the same seeded order. With `distributed.mode=local_sgd` (local_sgd.py) DDP only runs
the warm-up; then the ranks train apart and sync their changes every few steps. Methods whose
selection changes (`refresh_due` / `refresh_mask` at epoch ends, `selection_changed` after any
step) get their optimizer rebuilt mid-run, only when the parameters it sees really changed.
One Trainer runs one stage of a run (its own optimizer and schedule); the train job loops over
the method's stages and records the stage in every metrics record and checkpoint.
Events (core/events.py): the trainer fires each `Event` on the method, then on every callback
in list order; it knows no method and no callback by name. Early stopping, best-checkpoint
selection, periodic checkpoints, the NaN check, local SGD and sparse checkpoints are callbacks
(train/callbacks/), chosen by config; a method's capabilities (`Staged`, `SelectionChanges`,
`Schedule`: methods/base.py) are recognised by `isinstance`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..core.events import Event, EvalOutcome, EventHandler
from ..core.progress import progress_bar
from ..methods.base import Method, Schedule, SelectionChanges
from ..models.bundle import ModelBundle, to_device
from ..tasks.base import DataError, TaskData
from . import distributed as D
from . import resume_point
from .callbacks import CallbackSetup, TrainerCallback
from .callbacks.registry import build_callbacks
from .callbacks.builtin import TrainingDiverged, early_stopping_patience  # noqa: F401  (re-exported)
from .checkpoint import Resume
from .evaluator import Evaluator
from .optim import build_optimizer, build_scheduler, clip_sets
from .preemption import Preempted, PreemptionWatcher, Terminated, critical
from .state import WORKER_KEYS, TrainState, clone_tree, epoch_order, parse_every, rng_state, set_rng_state, steps_per_epoch, total_steps  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class _Phases:
    """Switches the single open telemetry phase (train ↔ eval) without nesting them."""

    def __init__(self, open_phase: Callable[[str], contextlib.AbstractContextManager]):
        self.open_phase = open_phase
        self.current = None

    def to(self, name: str | None) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None
        if name is not None:
            self.current = self.open_phase(name)
            self.current.__enter__()


class Trainer:
    def __init__(
        self,
        cfg,
        bundle: ModelBundle,
        task: TaskData,
        method: Method,
        features: dict,
        device: torch.device,
        seed: int,
        log_metrics: Callable[[dict], None] = lambda record: None,
        phase: Callable[[str], contextlib.AbstractContextManager] = lambda name: contextlib.nullcontext(),
        checkpoint_dir: Path | None = None,
        dist_info: D.DistInfo = D.DistInfo(),
        resume_state: Resume | None = None,
        callbacks: list[TrainerCallback] | None = None,
        stage: int = 0,
        job_state: Callable[[], dict] | None = None,
    ):
        self.cfg = cfg
        self.bundle = bundle
        self.task = task
        self.method = method
        self.features = features  # split name -> encoded Dataset
        self.device = device
        self.seed = seed
        self.log_metrics = log_metrics if dist_info.is_main else (lambda record: None)
        self.phases = _Phases(phase)
        self.checkpoint_dir = checkpoint_dir
        self.dist = dist_info
        self.resume_state = resume_state
        self.state = TrainState(stage=stage)
        # the callbacks (train/callbacks/); None: the ones the trainer config enables (a bare Trainer)
        if callbacks is None:
            callbacks = build_callbacks(CallbackSetup(trainer_cfg=cfg, dist_info=dist_info, checkpoint_dir=checkpoint_dir), user=False)
        self.callbacks = list(callbacks)
        self.handlers = [method, *self.callbacks]  # who receives the events, in order
        self.job_state = job_state or dict  # what the job keeps in checkpoints besides the loop (finished stages)
        self.checkpoint_info: dict = {}  # more manifest.json entries (the job's resolved config, which a resume compares)
        self.stop_requested = False  # a callback asked the loop to stop (early stopping)
        self.preempting = False  # a signal arrived: this step's end checkpoints and exits
        self.optimizer = self.scheduler = self.train_module = None  # built by fit()
        self.autocast_dtype = None
        if cfg.precision != "fp32":
            if device.type == "cuda":
                self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
            else:
                log.warning("trainer.precision=%s: mixed precision runs on CUDA only; this CPU run uses fp32", cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.evaluator = Evaluator(bundle, task, features, device, cfg.eval_batch_size, dist_info, self.autocast_dtype)

    # --- sizes ----------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return len(self.features[self.task.train_split])

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.cfg, self.train_size, self.dist.world_size)

    def total_steps(self) -> int:
        return total_steps(self.cfg, self.train_size, self.dist.world_size)

    def _autocast(self):
        return self.evaluator.autocast()

    # --- checkpoints ----------------------------------------------------------------------
    def fire(self, event: Event, *args) -> None:
        """`event` on the method, then on every callback in list order."""
        for handler in self.handlers:
            handler.run_event(event, self, *args)

    def request_stop(self) -> None:
        """Stop the loop after the current step (what early stopping calls)."""
        self.stop_requested = True

    def optimizer_params(self) -> list[torch.Tensor]:
        """The tensors the optimizer trains, in its group order."""
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def position(self, copy: bool = False) -> dict:
        """Where this rank's run is now, as checkpoints/last holds it (train/resume_point.py)."""
        return resume_point.position(self, copy)

    def save_last(self) -> None:
        """checkpoints/last/, written atomically by rank 0 (train/resume_point.py)."""
        resume_point.save_last(self)

    # --- training -------------------------------------------------------------------------
    def train_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        order = D.shard(epoch_order(self.train_size, self.seed, epoch), self.dist)
        return DataLoader(
            self.features[self.task.train_split],
            batch_size=self.cfg.batch_size,
            sampler=order[skip_batches * self.cfg.batch_size :],
            collate_fn=self.bundle.collate,
            num_workers=self.cfg.num_workers,
            generator=self._loader_generator(epoch),
        )

    def _loader_generator(self, epoch: int) -> torch.Generator:
        # a DataLoader draws its workers' base seed from this generator when iterated; with the
        # default (global) RNG, every new loader (a resume, an evaluation) would shift dropout
        return torch.Generator().manual_seed(self.seed * 7919 + epoch)

    def _train_module(self):
        module = self.bundle.module
        if not self.dist.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _groups_differ(self, groups: list[dict]) -> bool:
        """Do these param groups hold other tensors (or other decay) than the optimizer's?"""
        def layout(gs):
            return [([id(p) for p in g["params"]], g.get("weight_decay")) for g in gs]

        return layout(groups) != layout(self.optimizer.param_groups)

    def rebuild_optimizer(self) -> None:
        """A new optimizer over the method's current `param_groups()` (after a mask change); the
        schedule goes on from the same position and the method carries over the optimizer state
        that still applies (entries that stay selected keep their moments, new ones start at zero)."""
        cfg = self.cfg
        old, old_optimizer = self.scheduler, self.optimizer
        self.optimizer = build_optimizer(cfg, self.method.param_groups(cfg.weight_decay))
        if isinstance(self.method, SelectionChanges):
            self.method.carry_optimizer_state(old_optimizer, self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if isinstance(self.optimizer, torch.optim.SGD) and any(p in self.optimizer.state for p in params):
            # (fused) SGD wants a momentum buffer for all or none: a new tensor starts from zero,
            # which equals SGD's own first step (buffer = gradient)
            for p in params:
                self.optimizer.state.setdefault(p, {}).setdefault("momentum_buffer", torch.zeros_like(p))
        self.scheduler = build_scheduler(cfg, self.optimizer, self.total_steps())
        self.scheduler.last_epoch = old.last_epoch
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(old.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def sync_ranks(self) -> None:
        """Every rank must hold the same weights now (local SGD finishes its round)."""
        self.fire(Event.SYNC)

    def params_overwritten(self) -> None:
        """The optimizer's parameters were overwritten from outside (a local-SGD sync): a method
        holding copies of them writes them back."""
        if isinstance(self.method, SelectionChanges):
            self.method.sync_to_module()

    def refresh_mask(self) -> None:
        """The method re-selects what trains (rank 0 computes, the other ranks adopt its
        selection), and the optimizer is rebuilt when the parameters it sees changed."""
        import torch.distributed as tdist

        self.sync_ranks()
        if not isinstance(self.method, SelectionChanges):  # its selection never changes (the same on every rank)
            self.fire(Event.AFTER_REFRESH, False)
            return
        self.phases.to(None)
        changed = self.method.refresh_mask() if self.dist.is_main else False
        if tdist.is_initialized() and self.dist.world_size > 1:
            box = [changed, self.method.mask_state() if self.dist.is_main else None]
            tdist.broadcast_object_list(box, src=0)
            changed = bool(box[0])
            if not self.dist.is_main and changed:
                self.method.load_mask_state(box[1])
        self.phases.to("train")
        if changed:
            self.rebuild_optimizer()
            if isinstance(self.train_module, DistributedDataParallel):  # re-wrap over the parameters that now train
                self.train_module = self._train_module()
        self.fire(Event.AFTER_REFRESH, changed)

    def fit(self) -> TrainState:
        cfg, module = self.cfg, self.bundle.module
        module.to(self.device)
        self.optimizer = build_optimizer(cfg, self.method.param_groups(cfg.weight_decay))
        total = self.total_steps()
        self.scheduler = build_scheduler(cfg, self.optimizer, total)
        if self.resume_state is not None:
            resume_point.restore(self, self.resume_state)
            self.resume_state = None
        st = self.state
        self.train_module = self._train_module()
        self.stop_requested = self.preempting = False
        self.fire(Event.FIT_START)
        log.info("training %d optimizer steps (%d examples, batch %d x accum %d x %d ranks)", total, self.train_size, cfg.batch_size, cfg.grad_accum, self.dist.world_size)
        bar = progress_bar(total=total, initial=st.step, enabled=self.dist.is_main and self.cfg.progress, desc="train")
        watcher = PreemptionWatcher(list(cfg.get("preempt_signals") or []))
        self.phases.to("train")
        loop_done = False
        try:
            with watcher:
                while st.step < total and not self.stop_requested:
                    module.train()
                    loader = self.train_loader(st.epoch, st.epoch_batches)
                    n_micro = len(loader) + st.epoch_batches
                    if len(loader) == 0:  # never spin here: an empty loader would make no step, forever
                        raise DataError(f"the {self.task.train_split!r} split gives no training batches in epoch {st.epoch} "
                                        f"(from batch {st.epoch_batches} on; {self.train_size} examples, batch size {cfg.batch_size}, "
                                        f"{self.dist.world_size} rank(s)): nothing to train on")
                    for i, batch in enumerate(loader, start=st.epoch_batches):
                        batch = to_device(batch, self.device)
                        train_module = self.train_module
                        boundary = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_micro
                        sync = train_module.no_sync() if not boundary and isinstance(train_module, DistributedDataParallel) else contextlib.nullcontext()
                        with sync:
                            with self._autocast():
                                loss = self.bundle.loss_fn(train_module, batch)
                                extra = self.method.extra_loss()
                                if extra is not None:
                                    loss = loss + extra
                            loss_value = float(loss.detach())
                            self.scaler.scale(loss / cfg.grad_accum).backward()
                        st.samples += len(batch["labels"]) * self.dist.world_size
                        st.tokens += self.bundle.num_tokens(batch) * self.dist.world_size
                        st.loss_sum += loss_value
                        st.loss_count += 1
                        if not boundary:
                            continue
                        # every rank reaches this point at the same steps: agree on a stop
                        stop = D.any_flag([watcher.received is not None], self.device)[0]
                        self.fire(Event.AFTER_BACKWARD)  # the NaN check fails the run here
                        if cfg.max_grad_norm > 0:
                            self.scaler.unscale_(self.optimizer)
                            for params in clip_sets(self.optimizer):  # one set unless a method tags groups apart
                                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                        module.zero_grad(set_to_none=True)
                        self.fire(Event.AFTER_STEP)
                        if (isinstance(self.method, SelectionChanges) and self.method.selection_changed(st.step)
                                and self._groups_differ(self.method.param_groups(cfg.weight_decay))):
                            self.rebuild_optimizer()
                        self.fire(Event.STEP_END)
                        st.step += 1
                        st.epoch_batches = i + 1
                        bar.update(1)
                        if st.step % cfg.log_every == 0 or st.step == total:
                            record = {"type": "train", "stage": st.stage, "step": st.step, "epoch": st.epoch, "loss": D.mean_scalar(st.loss_sum / st.loss_count, self.device), "lr": self.scheduler.get_last_lr()[0]}
                            self.log_metrics(record)
                            bar.set_postfix(loss=f"{record['loss']:.4f}")
                            log.info("step %d/%d  loss %.4f  lr %.3g", st.step, total, record["loss"], record["lr"])
                            st.loss_sum, st.loss_count = 0.0, 0
                        if cfg.eval_every > 0 and st.step % cfg.eval_every == 0:
                            self._evaluate_and_select()
                        epoch_done = i + 1 == n_micro
                        if epoch_done:
                            self._end_epoch()
                        self.preempting = stop
                        self.fire(Event.STEP_RECORDED)  # the step is fully recorded: a resumable point (periodic checkpoints)
                        if stop:
                            self.save_last()
                            if watcher.received is not None:
                                watcher.chain()  # e.g. submitit requeues here (and exits)
                            raise Preempted(watcher.received or signal.SIGTERM, st.step)
                        if st.step >= total or epoch_done or self.stop_requested:
                            break
                # a signal after the last step's stop check: that step is done, checkpoint it
                if D.any_flag([watcher.received is not None], self.device)[0]:
                    self.save_last()
                    if watcher.received is not None:
                        watcher.chain()
                    raise Preempted(watcher.received or signal.SIGTERM, st.step)
            loop_done = True
            # from here the job's SignalGuard holds the signals: one stops the evaluation at once
            if st.last_eval_step != st.step:
                self._evaluate_and_select()
        except Terminated as err:
            if loop_done and not self.dist.enabled and self.checkpoint_dir is not None:
                self.save_last()  # every step is done (an evaluation is recorded whole or not at all): a resume evaluates what is missing
                err.checkpoint_step = st.step
            raise
        finally:
            self.phases.to(None)
            bar.close()
        self.fire(Event.FIT_END)  # the best checkpoint's weights are restored here (callbacks/builtin.py)
        return st

    def _end_epoch(self) -> None:
        st = self.state
        finished = st.epoch
        st.epoch += 1
        st.epoch_batches = 0
        if st.last_eval_step != st.step:
            self._evaluate_and_select()
        if any(type(h).on_epoch_end is not EventHandler.on_epoch_end for h in self.handlers):
            self.sync_ranks()  # checkpoints see the weights every rank holds
        self.fire(Event.EPOCH_END, finished, st.step)
        if st.step >= self.total_steps():
            return
        if any(cb.takes_selection(self) for cb in self.callbacks):
            return
        if isinstance(self.method, SelectionChanges) and self.method.refresh_due(finished):
            self.refresh_mask()

    def _evaluate_and_select(self) -> None:
        with contextlib.ExitStack() as views:
            for cb in self.callbacks:
                views.enter_context(cb.eval_view(self))
            self.phases.to("eval")
            results = {split: self.evaluate(split) for split in self.task.eval_splits if self.features.get(split)}
            with critical("recording this evaluation"):  # all of it or none: a resume must not see half
                self._select(results)

    def _select(self, results: dict) -> None:
        st = self.state
        self.phases.to("train")
        st.last_eval_step = st.step
        for split, metrics in results.items():
            comm = {k: v for cb in self.callbacks for k, v in cb.eval_record().items()}
            self.log_metrics({"type": "eval", "stage": st.stage, "step": st.step, "epoch": st.epoch, "split": split, **metrics, **comm})
            log.info("eval step %d  %s  %s", st.step, split, "  ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.4f}" for k, v in metrics.items()))
        selection = results.get(self.task.eval_splits[0])
        # an evaluation competes for the best only on the selection split, and only when the
        # method allows it (Schedule.selectable: e.g. gradual pruning before the final sparsity)
        competed = selection is not None and (not isinstance(self.method, Schedule) or self.method.selectable(st.step))
        improved = False
        if competed:
            main = selection["main"]
            improved = st.best_step < 0 or (math.isfinite(main) and main > st.best_main)
            if improved:
                st.best_main, st.best_step, st.best_metrics = main, st.step, results
        self.fire(Event.EVAL_END, EvalOutcome(results, competed, improved))

    def release_training_state(self) -> None:
        """Before inference is measured: the optimizer's state, the gradients, the DDP wrapper
        and the scheduler go, and freed memory is handed back, so that the inference figures hold
        the model and its inference buffers only, not training's leftovers (a dense fine-tuning's AdamW
        moments were 2/3 of its "inference" peak). The trainer cannot train afterwards."""
        from ..telemetry.resources import release_freed_memory

        if self.optimizer is not None:
            self.optimizer.state.clear()
            self.optimizer.zero_grad(set_to_none=True)
        self.bundle.module.zero_grad(set_to_none=True)
        self.optimizer = self.scheduler = None
        self.train_module = None
        release_freed_memory(self.device)

    # --- evaluation (the shared Evaluator) ------------------------------------------------
    def predictions(self, split: str) -> tuple[np.ndarray, np.ndarray | None]:
        return self.evaluator.predictions(split)

    def evaluate(self, split: str) -> dict:
        return self.evaluator.evaluate(split)
