"""The training loop. It knows no method and no architecture by name: the method decides what the
optimizer sees and reacts at a few hook points; the model bundle turns batches into a loss or
predictions; telemetry phases ("train", "eval") are opened through a callable from outside.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..methods.base import Method
from ..models.bundle import ModelBundle, to_device
from ..tasks.base import TaskData
from .optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda: no CUDA device is available (use trainer.device=auto or cpu)")
    return torch.device(name)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) only, so a run can
    resume mid-epoch by skipping the first examples of this order."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


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


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    samples: int = 0
    tokens: int = 0
    best_main: float = -math.inf
    best_step: int = -1
    best_metrics: dict = field(default_factory=dict)
    last_eval_step: int = -1


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
    ):
        self.cfg = cfg
        self.bundle = bundle
        self.task = task
        self.method = method
        self.features = features  # split name -> encoded Dataset
        self.device = device
        self.seed = seed
        self.log_metrics = log_metrics
        self.phases = _Phases(phase)
        self.state = TrainState()
        self._best_weights: dict | None = None
        self.autocast_dtype = None
        if cfg.precision != "fp32":
            if device.type == "cuda":
                self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
            else:
                log.warning("trainer.precision=%s: mixed precision runs on CUDA only; this CPU run uses fp32", cfg.precision)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

    # --- sizes ----------------------------------------------------------------------------
    @property
    def train_size(self) -> int:
        return len(self.features[self.task.train_split])

    def steps_per_epoch(self) -> int:
        micro = math.ceil(self.train_size / self.cfg.batch_size)
        return math.ceil(micro / self.cfg.grad_accum)

    def total_steps(self) -> int:
        return int(self.cfg.max_steps) if self.cfg.max_steps > 0 else int(self.cfg.epochs) * self.steps_per_epoch()

    def _progress_enabled(self) -> bool:
        setting = self.cfg.progress
        return sys.stderr.isatty() if setting == "auto" else bool(setting)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # --- training -------------------------------------------------------------------------
    def train_loader(self, epoch: int, skip: int = 0) -> DataLoader:
        order = epoch_order(self.train_size, self.seed, epoch)[skip:]
        return DataLoader(
            self.features[self.task.train_split],
            batch_size=self.cfg.batch_size,
            sampler=order,
            collate_fn=self.bundle.collate,
            num_workers=self.cfg.num_workers,
        )

    def fit(self) -> TrainState:
        cfg, st, module = self.cfg, self.state, self.bundle.module
        module.to(self.device)
        self.optimizer = build_optimizer(cfg, self.method.param_groups(cfg.weight_decay))
        total = self.total_steps()
        self.scheduler = build_scheduler(cfg, self.optimizer, total)
        opt_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        log.info("training %d optimizer steps (%d examples, batch %d x accum %d)", total, self.train_size, cfg.batch_size, cfg.grad_accum)
        bar = tqdm(total=total, initial=st.step, disable=not self._progress_enabled(), desc="train", dynamic_ncols=True)
        running, n_running = 0.0, 0
        self.phases.to("train")
        try:
            while st.step < total:
                module.train()
                loader = self.train_loader(st.epoch)
                n_micro = len(loader)
                for i, batch in enumerate(loader):
                    batch = to_device(batch, self.device)
                    with self._autocast():
                        loss = self.bundle.loss(batch)
                        extra = self.method.extra_loss()
                        if extra is not None:
                            loss = loss + extra
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise TrainingDiverged(f"loss is {loss_value} at optimizer step {st.step + 1} (epoch {st.epoch})")
                    self.scaler.scale(loss / cfg.grad_accum).backward()
                    st.samples += len(batch["labels"])
                    st.tokens += self.bundle.num_tokens(batch)
                    running += loss_value
                    n_running += 1
                    if (i + 1) % cfg.grad_accum and i + 1 < n_micro:
                        continue
                    self.method.after_backward(st.step)
                    if cfg.max_grad_norm > 0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(opt_params, cfg.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    module.zero_grad(set_to_none=True)
                    self.method.after_step(st.step)
                    st.step += 1
                    bar.update(1)
                    if st.step % cfg.log_every == 0 or st.step == total:
                        record = {"type": "train", "step": st.step, "epoch": st.epoch, "loss": running / n_running, "lr": self.scheduler.get_last_lr()[0]}
                        self.log_metrics(record)
                        bar.set_postfix(loss=f"{record['loss']:.4f}")
                        log.info("step %d/%d  loss %.4f  lr %.3g", st.step, total, record["loss"], record["lr"])
                        running, n_running = 0.0, 0
                    if cfg.eval_every > 0 and st.step % cfg.eval_every == 0:
                        self._evaluate_and_select()
                    if st.step >= total:
                        break
                else:  # the epoch ran to its end
                    self.method.on_epoch_end(st.epoch)
                    st.epoch += 1
                    if st.last_eval_step != st.step:
                        self._evaluate_and_select()
                    continue
                break  # max_steps reached mid-epoch
            if st.last_eval_step != st.step:
                self._evaluate_and_select()
        finally:
            self.phases.to(None)
            bar.close()
        if cfg.select_best and self._best_weights is not None and st.best_step != st.step:
            log.info("restoring the best checkpoint (step %d, %s=%.4f)", st.best_step, self.task.main_metric, st.best_main)
            module.load_state_dict(self._best_weights)
        self._best_weights = None
        return st

    def _evaluate_and_select(self) -> None:
        st = self.state
        self.phases.to("eval")
        results = {split: self.evaluate(split) for split in self.task.eval_splits if self.features.get(split)}
        self.phases.to("train")
        st.last_eval_step = st.step
        for split, metrics in results.items():
            self.log_metrics({"type": "eval", "step": st.step, "epoch": st.epoch, "split": split, **metrics})
            log.info("eval step %d  %s  %s", st.step, split, "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        selection = results.get(self.task.eval_splits[0])
        if selection is None:
            return
        main = selection["main"]
        if st.best_step < 0 or (math.isfinite(main) and main > st.best_main):
            st.best_main, st.best_step, st.best_metrics = main, st.step, results
            if self.cfg.select_best:
                self._best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.bundle.module.state_dict().items()}

    # --- evaluation -----------------------------------------------------------------------
    def predictions(self, split: str) -> tuple[np.ndarray, np.ndarray | None]:
        module = self.bundle.module
        was_training = module.training
        module.eval()
        loader = DataLoader(self.features[split], batch_size=self.cfg.eval_batch_size, shuffle=False, collate_fn=self.bundle.collate)
        preds, labels = [], []
        with torch.inference_mode(), self._autocast():
            for batch in loader:
                batch = to_device(batch, self.device)
                preds.append(self.bundle.predict(batch).numpy())
                if "labels" in batch:
                    labels.append(batch["labels"].cpu().numpy())
        module.train(was_training)
        return np.concatenate(preds), (np.concatenate(labels) if labels else None)

    def evaluate(self, split: str) -> dict:
        preds, labels = self.predictions(split)
        if labels is None:
            raise ValueError(f"split {split!r} has no labels to evaluate against")
        return {k: float(v) for k, v in self.task.metric_fn(preds, labels).items()}

