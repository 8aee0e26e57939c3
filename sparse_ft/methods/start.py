"""A start from a finished run (`method.init_from`): its final weights and, when it pruned, its
keep-masks. Family-neutral (any method may start from any finished run; LoRA on a pruned model
is the one user today), so it lives beside `base.py`, not in a family: it reads the run through
core/runs.py (the reader `source=` uses too) and the mask through the prune-mask file's codec
(pruning/masks.py, which imports nothing but core).

`method.init_from=<run dir>` (LoRA: `python run.py method=lora method.init_from=<pruned run>`)
starts the run from that run's final weights (`checkpoints/final/model.safetensors`) instead of
the pretrained ones; when the run pruned (it left `prune_mask.safetensors`), its keep-masks go
with it: the method applies the mask to its update, in training (the layer computes with
W + M ⊙ ΔW) and in the merged export (W̃ = W + M ⊙ ΔW, pruned entries written as +0.0), so the
final checkpoint has its zeros exactly where the mask says and what was evaluated is what is saved.

Loading: every tensor of the source checkpoint whose name and shape match the model is copied
in; a tensor of another shape (the head of a task with another label count) is left as freshly
initialised and logged; a name the model does not have is an error (another architecture), as is
a source run of another `model.name`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.runs import FINAL_WEIGHTS, final_weights, run_setting
from .pruning.masks import MASK_FILE, load_masks, measure, save_masks

log = logging.getLogger(__name__)

KEY = "method.init_from"


@dataclass
class Start:
    run_dir: Path
    keep: dict[str, torch.Tensor] | None  # None: the source run did not prune
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # shape differs (e.g. another task's head)

    def report(self) -> dict:
        out = {"init_from": str(self.run_dir), "loaded_tensors": len(self.loaded), "skipped_tensors": self.skipped}
        if self.keep is not None:
            out["mask"] = str(self.run_dir / MASK_FILE)
            out["masked_entries"] = sum(int((~k).sum()) for k in self.keep.values())
        return out


def check_start(path) -> Path:
    """The run directory `init_from` names, checked before any model loads."""
    run = Path(str(path))
    if not run.is_dir():
        raise ConfigError(KEY, f"{run}: no such run directory")
    if not final_weights(run).is_file():
        raise ConfigError(KEY, f"{run}: no final weights ({FINAL_WEIGHTS}; was the run saved with trainer.save_final=true?)")
    return run


@torch.no_grad()
def load_start(module: nn.Module, path, model_name: str | None = None) -> Start:
    """Copy the source run's final weights into `module` (the base model, before any wrapping)
    and read its pruning masks; see the module docstring."""
    from safetensors.torch import load_file

    run = check_start(path)
    src_model = run_setting(run, "model.name")  # the reader config/source.py uses for `source=` runs
    if model_name is not None and src_model is not None and src_model != model_name:
        raise ConfigError(KEY, f"{run} trained model {src_model!r}, this run builds {model_name!r}")
    weights = load_file(str(final_weights(run)))
    own = module.state_dict()
    unknown = sorted(set(weights) - set(own))
    if unknown:
        raise ConfigError(KEY, f"{run}: {len(unknown)} tensor(s) the model does not have, e.g. {unknown[:3]} (another architecture?)")
    start = Start(run, None)
    for name, t in weights.items():
        if tuple(t.shape) != tuple(own[name].shape):
            start.skipped.append(name)
            continue
        own[name].copy_(t)
        start.loaded.append(name)
    if start.skipped:
        log.info("init_from %s: %d tensor(s) of another shape left as initialised: %s", run, len(start.skipped), start.skipped)
    if (run / MASK_FILE).is_file():
        keep = load_masks(run / MASK_FILE)
        bad = [n for n in keep if n not in own or tuple(keep[n].shape) != tuple(own[n].shape) or n in start.skipped]
        if bad:
            raise ConfigError(KEY, f"{run / MASK_FILE}: masks for tensors this model does not have in that shape: {bad[:3]}")
        start.keep = keep
        zeros_off = sum(int((own[n][~k] != 0).sum()) for n, k in keep.items())
        if zeros_off:
            raise ConfigError(KEY, f"{run}: {zeros_off} entries its mask prunes are not zero in its final weights")
    log.info("init_from %s: %d tensors loaded%s", run, len(start.loaded),
             f"; pruning mask over {len(start.keep)} tensors kept through the merge" if start.keep else "")
    return start


def mask_update(delta: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The update with the pruned entries +0.0 (masked_fill, never a product: −x·0 is −0.0)."""
    return delta.masked_fill(~keep.to(delta.device), 0.0)


def save_start_mask(run_dir, start: Start, method: str) -> dict[str, int]:
    """The start's keep-masks beside the merged checkpoint: {file name: bytes written}."""
    info = {"method": method, "init_from": str(start.run_dir)}
    return {MASK_FILE: save_masks(Path(run_dir) / MASK_FILE, start.keep, info)}


def sparsity_block(weights: dict[str, torch.Tensor], start: Start, parameters: list[str]) -> dict:
    """summary.json `sparsity` of the merged weights, over the source run's pruned tensors."""
    block = measure(weights, list(start.keep), [n for n in parameters if n in weights])
    block.update(source=str(start.run_dir / MASK_FILE), pattern="from init_from")
    return block
