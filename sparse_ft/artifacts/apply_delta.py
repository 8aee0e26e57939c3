"""Rebuild full weights from a base model and a run's sparse delta.

    python -m sparse_ft.artifacts.apply_delta RUN_DIR OUT_DIR

RUN_DIR is the run directory of a sparse method (fish, random_mask, bitfit, diff_pruning); it
holds `delta.safetensors` (changed entries: int32 flat indices + values per tensor, the new head
and changed buffers in full, the base model's id and a fingerprint of every base tensor) and
`config.yaml`. The base is loaded like the run loaded it (hub id, local path or bundled package;
for randomly initialised models the run kept its initial weights in `delta_base.safetensors`),
checked against the fingerprints, and the delta applied. `OUT_DIR/model.safetensors` then equals
the run's `checkpoints/final/model.safetensors` bit for bit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from ..core.io import fingerprint, load_tensors, save_tensors
from ..methods.masked.masking import DELTA_FILE, DELTA_FORMAT, named_params
from . import sparse_delta
from .sparse_delta import DeltaError

log = logging.getLogger("sparse_ft.artifacts.apply_delta")


def read_delta(run_dir: Path) -> tuple[dict, dict]:
    path = Path(run_dir) / DELTA_FILE
    if not path.is_file():
        raise DeltaError(f"{path}: no sparse delta here (only fish, random_mask, bitfit and diff_pruning runs write one)")
    tensors, meta = sparse_delta.read(path)
    if meta.get("format") != DELTA_FORMAT:
        raise DeltaError(f"{path}: unknown format {meta.get('format')!r}")
    return tensors, meta


def build_base(run_dir: Path, base: dict):
    """The base module (architecture + weights) and the `source` string the run recorded."""
    if base.get("kind") not in ("pretrained", "file"):
        raise DeltaError(f"{run_dir}: the delta records no base model (the run had no config.yaml)")
    model_cfg = OmegaConf.create(base["model"])
    task = SimpleNamespace(**base["task"], label_names=[])
    from ..models.hf_vision import is_hf_vision

    if is_hf_vision(model_cfg):  # ViT / DINO (transformers)
        from ..models.hf_vision import load_module as load_image_classifier

        module, source, *_ = load_image_classifier(model_cfg, task.num_labels)
    elif model_cfg.arch == "vision":
        from ..models.vision import build_module

        module, source = build_module(model_cfg, task.num_labels), str(model_cfg.name_or_path)
    elif model_cfg.arch == "causal_lm":  # GPT-2 for the NLG tasks
        from ..models.causal_lm import load_lm_module

        module, source, _ = load_lm_module(model_cfg)
    elif str(base["task"].get("head", "")).endswith("ForQuestionAnswering"):  # SQuAD's span head
        from ..models.qa import load_qa_module

        module, source, _ = load_qa_module(model_cfg)
    else:
        from ..models.text import load_module, load_tokenizer

        module, source, _ = load_module(model_cfg, task, load_tokenizer(model_cfg))
    if base["kind"] == "file":
        path = Path(run_dir) / base["file"]
        if not path.is_file() and base.get("path"):  # a run resumed from another directory
            path = Path(base["path"])
        if not path.is_file():
            raise DeltaError(f"{path}: the base weights of this randomly initialised model are missing")
        module.load_state_dict(load_tensors(path))
    return module, source


def apply_delta(module: torch.nn.Module, tensors: dict, meta: dict) -> None:
    """Check the base against the run's fingerprints, then write the delta into `module`."""
    fingerprints = json.loads(meta.get("fingerprints", "{}"))
    params = named_params(module)
    for name, expected in fingerprints.items():
        if name not in params:
            raise DeltaError(f"the base model has no tensor {name!r}")
        got = fingerprint(params[name])
        if got != expected:
            raise DeltaError(f"base tensor {name!r} differs from the run's initial weights ({got} != {expected}): another model revision?")
    sparse_delta.apply(tensors, params, dict(module.named_buffers()))


def rebuild(run_dir: Path, out_dir: Path) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    tensors, meta = read_delta(run_dir)
    base = json.loads(meta["base"])
    torch.manual_seed(int(base.get("seed") or 0))
    module, source = build_base(run_dir, base)
    apply_delta(module, tensors, meta)
    out = out_dir / "model.safetensors"
    save_tensors(module.state_dict(), out, {"model": str(source)})
    log.info("rebuilt %s from %s + %s", out, base.get("id"), run_dir / DELTA_FILE)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_ft.artifacts.apply_delta", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="run directory holding delta.safetensors and config.yaml")
    parser.add_argument("out_dir", type=Path, help="where model.safetensors is written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = rebuild(args.run_dir, args.out_dir)
    except DeltaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
