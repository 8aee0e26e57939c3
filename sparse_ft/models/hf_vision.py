"""Hugging Face image classifiers: ViT-Base / ViT-Large (supervised) and DINO ViT-B/16
(self-supervised, same architecture) — the Essential Sparsity paper's vision checkpoints — plus a
random-init `tiny_vit` for tests.

The network is `AutoModelForImageClassification` with a new head sized for the task's classes
(`ignore_mismatched_sizes`: the checkpoint's 1000-class ImageNet head, or none for DINO, is
replaced; body parameters missing from the checkpoint are the bundle's `newly_initialized`). Image tasks hand over tensors normalised with the
task's own mean/std (``task.info["normalize"]``); before the model sees them they are
un-normalised back to [0, 1], resized to the checkpoint's input size and normalised with the
checkpoint's image-processor mean/std (its `preprocessor_config.json`, read with
`AutoImageProcessor`; `model.image_processor` overrides its fields, and a random-init model
takes them from there). The resize runs on the batch's device (bilinear or bicubic, as the
processor's `resample` says, on the float image rather than the processor's PIL uint8 path).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..tasks.base import TaskData
from .bundle import ModelBundle
from .hub import load_auto_model
from .text import ModelLoadError, _hub_error

log = logging.getLogger(__name__)

# PIL resample codes used in preprocessor configs -> torch interpolation modes
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def is_hf_vision(model_cfg) -> bool:
    """An image model built with transformers (not a `torchvision:<builder>` one)."""
    spec = model_cfg.get("name_or_path")
    if model_cfg.get("arch") != "vision":
        return False
    if spec is not None:
        return not str(spec).startswith("torchvision:")
    return str((model_cfg.get("config") or {}).get("model_type", "")) not in ("", "resnet")


def _pair(value) -> tuple[float, float, float]:
    vals = [float(v) for v in (list(value) if not isinstance(value, (int, float, str)) else [value])]
    return tuple(vals * 3) if len(vals) == 1 else tuple(vals)


def processor_spec(model_cfg, path) -> dict:
    """Input size, resample mode and mean/std the checkpoint expects."""
    spec = {"size": None, "resample": 2, "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)}
    if path is not None:
        from transformers import AutoImageProcessor

        try:
            proc = AutoImageProcessor.from_pretrained(path, revision=model_cfg.get("revision"))
        except (OSError, ValueError) as err:
            raise _hub_error("model.name_or_path", model_cfg.name_or_path, err) from err
        size = proc.size
        size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
        h = size.get("height") or size.get("shortest_edge")
        w = size.get("width") or size.get("shortest_edge")
        spec.update(size=(int(h), int(w)), resample=int(getattr(proc, "resample", 2) or 2),
                    image_mean=_pair(proc.image_mean), image_std=_pair(proc.image_std))
    for key, value in dict(model_cfg.get("image_processor") or {}).items():
        if key == "size":
            spec["size"] = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in list(value))
        elif key in ("image_mean", "image_std"):
            spec[key] = _pair(value)
        elif key == "resample":
            spec[key] = int(value)
        else:
            raise ModelLoadError(f"model.image_processor.{key}: unknown field (size, resample, image_mean, image_std)")
    if spec["resample"] not in _RESAMPLE:
        raise ModelLoadError(f"model.image_processor.resample={spec['resample']}: expected one of {sorted(_RESAMPLE)} (PIL codes)")
    return spec


class PixelPrep:
    """Task-normalised tensors → the checkpoint's input: un-normalise, resize, re-normalise."""

    def __init__(self, task: TaskData, spec: dict, default_size: int):
        norm = task.info.get("normalize") or {"mean": 0.0, "std": 1.0}
        self.task_mean = torch.tensor(_pair(norm["mean"])).view(1, 3, 1, 1)
        self.task_std = torch.tensor(_pair(norm["std"])).view(1, 3, 1, 1)
        self.mean = torch.tensor(spec["image_mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(spec["image_std"]).view(1, 3, 1, 1)
        self.size = tuple(spec["size"] or (default_size, default_size))
        self.mode = _RESAMPLE[spec["resample"]]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        x = x * self.task_std.to(dev) + self.task_mean.to(dev)  # back to [0, 1]
        if tuple(x.shape[-2:]) != self.size:
            kw = {} if self.mode == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=self.size, mode=self.mode, **kw)
            if self.mode == "bicubic":
                x = x.clamp(0.0, 1.0)
        return (x - self.mean.to(dev)) / self.std.to(dev)

    def info(self) -> dict:
        return {"size": list(self.size), "resample": self.mode, "image_mean": self.mean.flatten().tolist(),
                "image_std": self.std.flatten().tolist()}


def load_module(model_cfg, num_labels: int):
    """(module, source, the checkpoint path or None, the body's parameters missing from the checkpoint)."""
    from transformers import AutoModelForImageClassification

    module, source, missing = load_auto_model(AutoModelForImageClassification, model_cfg, num_labels, ignore_mismatched_sizes=True)
    if missing is None:
        return module, source, None, []
    prefix = module.base_model_prefix
    missing = sorted(n for n in missing if n.startswith(prefix + "."))
    if missing:
        log.warning("model %s: %s hold no trained values (missing from the checkpoint)", model_cfg.get("name"), ", ".join(missing))
    return module, source, source, missing


def build_hf_vision_bundle(model_cfg, task: TaskData) -> ModelBundle:
    module, source, path, missing = load_module(model_cfg, task.num_labels)
    default = int(getattr(module.config, "image_size", task.image_size or 32))
    prep = PixelPrep(task, processor_spec(model_cfg, path), default)

    def logits(mod, batch):
        return mod(pixel_values=prep(batch["pixel_values"])).logits

    from .vision import image_bundle

    return image_bundle(model_cfg, module, str(source), logits, {"image_processor": prep.info()}, upcast=True,
                        newly_initialized=tuple(missing))
