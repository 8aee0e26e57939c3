"""Local SGD with sparse communication (FISH paper §4.2) on the run's torch.distributed group.

After `distributed.warmup_epochs` of ordinary data-parallel training (DDP, per-rank batch =
total / M), every rank trains on its own disjoint shard without gradient sync. Every
`distributed.local_steps` optimizer steps the ranks exchange

    Δ_i = θ_i − θ_last_sync        over the entries the optimizer trains (the method's k entries)

with one all-reduce of a flat k-vector and set θ = θ_last_sync + reduce(Δ) (`sum`, the paper's
server sum, or `mean`). With a shared mask the positions are known to every rank, so only the k
fp32 values travel; entries outside the mask are never written and stay bit-identical on every
rank. Evaluations in between (`eval_at: server`) see the server's model, the weights of the last
sync (swapped in and out, no extra round); mask refreshes and the end of training finish the
current round first. Floating-point buffers (BatchNorm running statistics) are averaged at each
sync when `distributed.sync_buffers` is set; their bytes are counted separately.

Resume: a checkpoint (periodic or on pre-emption) never forces an extra round, so the trajectory
does not depend on when checkpoints are written. After the warm-up it holds the run as it was at
the last sync round, the last point where every rank held the same weights: the synced model,
the round counters, and each worker's own optimizer state, RNG and loop position (one entry per
rank). A resumed run goes on from that round and redoes the local steps taken since (at most
`local_steps` - 1), so it ends bit-identical to an uninterrupted run on CPU. The price: at every
round each worker keeps a CPU copy of the model and of its optimizer and method state (the
optimizer's covers the k trained entries of a masked method).
Float buffers that are not synced (`sync_buffers: false`) come back as rank 0's.

Accounting (per worker, cumulative): `bytes` = fp32 values each worker contributes to the
all-reduce (the payload; a ring all-reduce moves about 2(M−1)/M of it per worker on the wire),
`bytes_with_positions` = values + int32 positions (what a message without a shared mask carries),
and the paper's unit, `full_model_equivalents` = Σ rounds of 2·k/|θ| (values and positions) for a
sparse message, 1 for a dense one. With M = 1 there is no peer: nothing is sent and θ is left as
the worker's own (so M = 1 reproduces single-process training bit for bit).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.distributed as dist

from .callbacks import TrainerCallback

log = logging.getLogger(__name__)

MODES = ("none", "local_sgd")
REDUCES = ("sum", "mean")
EVAL_AT = ("server", "sync")


def is_local_sgd(cfg) -> bool:
    return cfg is not None and cfg.get("mode", "none") == "local_sgd"


class WorkerLost(RuntimeError):
    """A collective of the sync failed: another worker died or hung past trainer.dist_timeout_s."""


class LocalSGD:
    """Sync rounds over the optimizer's parameters; see the module docstring."""

    def __init__(self, cfg, world_size: int, total_params: int, buffers: list[torch.Tensor] | None = None, rank: int = 0):
        self.rank = rank
        self.steps_done = 0
        self.local_steps = int(cfg.local_steps)
        self.warmup_epochs = int(cfg.warmup_epochs)
        self.reduce = cfg.get("reduce", "sum")
        self.eval_at = cfg.get("eval_at", "server")
        self.world_size = world_size
        self.total_params = total_params  # |θ|: the paper's unit is relative to the whole model
        self.buffers = [b for b in (buffers or []) if b.is_floating_point()] if cfg.get("sync_buffers", True) else []
        self.active = False
        self.params: list[torch.Tensor] = []
        self.anchor: torch.Tensor | None = None
        self.since_sync = 0
        self.rounds = 0
        self.bytes = 0
        self.bytes_with_positions = 0
        self.fme = 0.0
        self.buffer_bytes = 0
        self.mask_broadcast_bytes = 0
        self.mask_broadcasts = 0
        self.warmup_steps = 0
        self.warmup_gradient_bytes = 0
        self.k = 0

    @property
    def communicating(self) -> bool:
        return self.world_size > 1 and dist.is_initialized()

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def start(self, params: list[torch.Tensor]) -> None:
        """(Re)start the rounds from identical weights over these (the optimizer's) tensors."""
        self.params = list(params)
        self.k = sum(p.numel() for p in self.params)
        self.anchor = self._flat().clone()
        self.anchor_buffers = [b.detach().clone() for b in self.buffers]
        self.since_sync = 0
        self.active = True

    @contextlib.contextmanager
    def server_view(self, write_back):
        """Evaluate the server's model (the weights of the last sync, identical on every rank)
        without a communication round: swap it in, then restore this worker's local weights.
        `write_back()` propagates overwritten optimizer parameters to the module."""
        if not self.active or self.since_sync == 0 or not self.communicating:
            yield
            return
        local = self._flat().clone()
        local_buffers = [b.detach().clone() for b in self.buffers]
        self._write(self.anchor, self.anchor_buffers)
        write_back()
        try:
            yield
        finally:
            self._write(local, local_buffers)
            write_back()

    @torch.no_grad()
    def _write(self, flat: torch.Tensor, buffers: list[torch.Tensor]) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.data.copy_(flat[offset : offset + n].view_as(p))
            offset += n
        for b, v in zip(self.buffers, buffers):
            b.copy_(v)

    def count_warmup_step(self, trainable: int) -> None:
        self.warmup_steps += 1
        if self.communicating:
            self.warmup_gradient_bytes += 4 * trainable  # DDP all-reduces every trainable gradient (fp32)

    def count_mask_broadcast(self, k: int) -> None:
        if self.communicating:
            self.mask_broadcasts += 1
            self.mask_broadcast_bytes += 4 * k  # int32 positions, once per (re)selection

    def after_step(self) -> bool:
        """Count a local step; sync when `local_steps` are done. True when a sync happened."""
        if not self.active:
            return False
        self.since_sync += 1
        return self.sync() if self.since_sync >= self.local_steps else False

    @torch.no_grad()
    def sync(self) -> bool:
        """One round (if any local step happened since the last one). Collective: every rank
        calls it at the same points. True when the parameter values were overwritten."""
        if not self.active or self.since_sync == 0:
            return False
        self.since_sync = 0
        self.rounds += 1 if self.communicating else 0
        if not self.communicating:  # M = 1: the server sum is the worker's own change
            self.anchor = self._flat().clone()
            return False
        flat = self._flat()
        delta = flat - self.anchor
        try:
            dist.all_reduce(delta, op=dist.ReduceOp.SUM)
        except (RuntimeError, dist.DistBackendError) as err:
            raise WorkerLost(f"local SGD sync round {self.rounds} on rank {self.rank}: a peer worker is gone or stuck ({err})") from err
        if self.reduce == "mean":
            delta /= self.world_size
        new = self.anchor + delta
        self._write(new, [])
        self.anchor = new
        self.bytes += delta.numel() * delta.element_size()
        dense = self.k >= self.total_params
        self.bytes_with_positions += delta.numel() * delta.element_size() + (0 if dense else 4 * self.k)
        self.fme += 1.0 if dense else 2.0 * self.k / self.total_params
        if self.buffers:
            buf = torch.cat([b.reshape(-1) for b in self.buffers])
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= self.world_size
            offset = 0
            for b in self.buffers:
                b.copy_(buf[offset : offset + b.numel()].view_as(b))
                offset += b.numel()
            self.buffer_bytes += buf.numel() * buf.element_size()
            self.anchor_buffers = [b.detach().clone() for b in self.buffers]
        return True

    @property
    def warmup_fme(self) -> float:
        """The data-parallel warm-up's gradient all-reduces, in full-model equivalents (dense)."""
        return self.warmup_gradient_bytes / (4 * self.total_params) if self.total_params else 0.0

    def cumulative(self) -> dict:
        """What eval records carry: cumulative communication so far (per worker), the warm-up's
        gradient traffic included in `comm_full_model_equivalents` and also given apart."""
        return {"comm_rounds": self.rounds, "comm_bytes": self.bytes, "comm_full_model_equivalents": self.fme + self.warmup_fme,
                "comm_sync_full_model_equivalents": self.fme, "comm_warmup_full_model_equivalents": self.warmup_fme}

    def summary(self) -> dict:
        dense = self.k >= self.total_params
        per_round = 0 if not self.communicating else self.k * 4
        return {
            "mode": "local_sgd",
            "workers": self.world_size,
            "reduce": self.reduce,
            "local_steps": self.local_steps,
            "warmup_epochs": self.warmup_epochs,
            "rounds": self.rounds,
            "values_per_message": self.k,
            "model_params": self.total_params,
            "density": self.k / self.total_params if self.total_params else None,
            "bytes": self.bytes,
            "bytes_per_round": per_round,
            "bytes_with_positions": self.bytes_with_positions,
            "full_model_bytes": 4 * self.total_params,
            "full_model_equivalents": self.fme + self.warmup_fme,  # the whole run: warm-up all-reduces + sync rounds
            "sync_full_model_equivalents": self.fme,
            "warmup_full_model_equivalents": self.warmup_fme,
            "full_model_equivalents_per_message": (1.0 if dense else 2.0 * self.k / self.total_params) if self.total_params else None,
            "full_model_equivalents_values_only": self.bytes / (4 * self.total_params) if self.total_params else None,
            "positions": "shared mask: positions are broadcast once per (re)selection, not per round" if not dense else "dense: no positions",
            "mask_broadcasts": self.mask_broadcasts,
            "mask_broadcast_bytes": self.mask_broadcast_bytes,
            "buffer_bytes": self.buffer_bytes,
            "warmup_steps": self.warmup_steps,
            "warmup_gradient_bytes": self.warmup_gradient_bytes,
            "units": "per worker, cumulative; bytes = fp32 payload each worker contributes to the all-reduce",
        }


def plot_accuracy_vs_communication(run_dir, out_name: str = "accuracy_vs_communication.png"):
    """`<run>/accuracy_vs_communication.png` from the eval records of metrics.jsonl (the paper's
    Figure 3 axes: main metric against cumulative full-model equivalents). Returns the path, or
    None when matplotlib or the records are missing."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except OSError:
        return None
    evals = [r for r in records if r.get("type") == "eval" and "comm_full_model_equivalents" in r and r.get("main") is not None]
    points = [(r["comm_full_model_equivalents"], r["main"]) for r in evals]
    if not points:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    # constrained layout: the axis labels and the title are sized into the figure, never clipped
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([x for x, _ in points], [y for _, y in points], marker="o", ms=3)
    warmup = max((r.get("comm_warmup_full_model_equivalents", 0.0) for r in evals), default=0.0)
    if warmup > 0:  # where the data-parallel warm-up's traffic ends and the sparse sync rounds begin
        ax.axvline(warmup, color="grey", linestyle="--", linewidth=1, label=f"end of DDP warm-up ({warmup:.1f})")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("communication incl. warm-up\n(full-model equivalents per worker, cumulative)")
    ax.set_ylabel("validation main metric")
    ax.grid(alpha=0.3)
    fig.suptitle("Local SGD: validation score vs communication", fontsize=11)
    path = run_dir / out_name
    fig.savefig(path, dpi=120)
    return path


class LocalSGDCallback(TrainerCallback):
    """Attaches LocalSGD to the trainer: the warm-up's gradient accounting, the switch from DDP to
    independent workers at the end of the warm-up, the rounds, and the server view for evaluation."""

    def __init__(self, cfg, dist_info, module: torch.nn.Module):
        self.local = LocalSGD(cfg, dist_info.world_size, sum(p.numel() for p in module.parameters()), list(module.buffers()), dist_info.rank)
        self.point: dict | None = None  # the trainer's position at the last sync round (what a checkpoint holds)
        self.resumed_active = False

    def _warmup_over(self, trainer) -> bool:
        return not self.local.active and trainer.state.epoch >= self.local.warmup_epochs

    def _begin(self, trainer) -> None:
        """End of the warm-up: drop DDP, let the method pick its mask, start the rounds."""
        trainer.train_module = trainer.bundle.module  # the DDP wrapper (and its gradient hooks) goes away
        log.info("local SGD: warm-up over after %d steps; %d workers now train on their shards, syncing every %d steps",
                 trainer.state.step, trainer.dist.world_size, self.local.local_steps)
        trainer.refresh_mask()

    def on_fit_start(self, trainer) -> None:
        self.point = None
        if self.resumed_active:  # resumed at a sync round after the warm-up: the mask came with the checkpoint
            self.resumed_active = False
            trainer.train_module = trainer.bundle.module
            self.local.start(trainer.optimizer_params())
            log.info("local SGD: resumed at sync round %d (step %d)", self.local.rounds, trainer.state.step)
            self.point = trainer.position(copy=True)
        elif self._warmup_over(trainer):
            self._begin(trainer)

    def on_step_recorded(self, trainer) -> None:
        """After the warm-up, a step that ended with a sync is where a resume can start."""
        if self.local.active and self.local.since_sync == 0:
            self.point = trainer.position(copy=True)

    def resume_point(self, trainer) -> dict | None:
        """What a checkpoint holds after the warm-up: the last sync round, not the current
        (unsynced) weights; None during the warm-up (DDP keeps the ranks identical)."""
        if not self.local.active or self.point is None:
            return None
        step = self.point["trainer_state"].state["step"]
        if step != trainer.state.step:
            log.info("local SGD: the checkpoint holds the last sync round (step %d); a resume redoes steps %d-%d", step, step + 1, trainer.state.step)
        return self.point

    COUNTERS = ("rounds", "bytes", "bytes_with_positions", "fme", "buffer_bytes", "mask_broadcast_bytes", "mask_broadcasts",
                "warmup_steps", "warmup_gradient_bytes")

    def state_dict(self) -> dict:
        return {"active": self.local.active, **{k: getattr(self.local, k) for k in self.COUNTERS}}

    def load_state_dict(self, state: dict) -> None:
        for k in self.COUNTERS:
            setattr(self.local, k, state[k])
        self.resumed_active = bool(state["active"])

    def on_step_end(self, trainer) -> None:
        if not self.local.active:
            self.local.count_warmup_step(sum(p.numel() for p in trainer.optimizer_params()))
        elif self.local.after_step():
            trainer.params_overwritten()

    def sync(self, trainer) -> None:
        if self.local.sync():
            trainer.params_overwritten()

    def takes_selection(self, trainer) -> bool:
        if not self._warmup_over(trainer):
            return False
        self._begin(trainer)
        return True

    def after_refresh(self, trainer, changed: bool) -> None:
        if changed:
            self.local.count_mask_broadcast(trainer.method.trainable_count())
        self.local.start(trainer.optimizer_params())

    @contextlib.contextmanager
    def eval_view(self, trainer):
        if self.local.eval_at == "sync" or trainer.state.step >= trainer.total_steps():
            self.sync(trainer)  # finish the round: the final weights are the synced ones
        with self.local.server_view(trainer.params_overwritten):  # else: the last sync's weights, no extra round
            yield

    def eval_record(self) -> dict:
        return self.local.cumulative()

    def on_fit_end(self, trainer) -> None:
        self.sync(trainer)  # the last (partial) round
        self.point = None

    def summary(self) -> dict:
        return self.local.summary()

    def summary_blocks(self, trainer) -> dict:
        batch = int(trainer.cfg.batch_size)
        return {"communication": {**self.local.summary(), "per_worker_batch": batch, "total_batch": batch * trainer.dist.world_size}}

    def finish(self, run_dir) -> None:
        plot_accuracy_vs_communication(run_dir)
