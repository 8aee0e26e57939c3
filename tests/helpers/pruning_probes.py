"""A trainer callback the pruning distributed test (tests/methods/pruning/test_pruning_distributed.py) loads through
`trainer.callbacks=[...]` into torchrun workers: every rank dumps its weights and its pruning
method's keep-masks when training starts and when it ends."""

from __future__ import annotations

from pathlib import Path

import torch

from sparse_ft.train.callbacks import TrainerCallback


class DumpPruned(TrainerCallback):
    """<out>/<start|end>_rank<r>.pt: {"state": the module's tensors, "keep": the method's masks, "step"}."""

    def __init__(self, out: str):
        self.out = Path(out)

    def _dump(self, tag: str, trainer) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        keep = getattr(trainer.method, "keep", {}) or {}
        torch.save({"state": {k: v.detach().to("cpu", copy=True) for k, v in trainer.bundle.module.state_dict().items()},
                    "keep": {k: v.detach().to("cpu", copy=True) for k, v in keep.items()},
                    "step": trainer.state.step},
                   self.out / f"{tag}_rank{trainer.dist.rank}.pt")

    def on_fit_start(self, trainer) -> None:
        self._dump("start", trainer)

    def on_fit_end(self, trainer) -> None:
        self._dump("end", trainer)
