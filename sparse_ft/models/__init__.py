"""Model builders: config → `ModelBundle` (module + how to feed it)."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..tasks.base import TaskData
from .bundle import ModelBundle
from .text import ModelLoadError

ARCHS = ("encoder", "decoder", "seq2seq", "vision")


def check_fits(model_cfg, modality: str) -> None:
    """A model whose inputs/head cannot serve the task fails here, before anything loads."""
    arch = model_cfg.get("arch")
    if arch not in ARCHS:
        raise ConfigError("model.arch", f"{arch!r} is not one of {', '.join(ARCHS)}")
    if (arch == "vision") != (modality == "image"):
        kind = "an image model" if arch == "vision" else "a text model"
        raise ConfigError("model", f"model={model_cfg.get('name')} is {kind} (arch={arch}) and cannot run a {modality} task")
    if not model_cfg.get("random_init") and not model_cfg.get("name_or_path"):
        raise ConfigError("model.name_or_path", "set a hub id, a local path or bundled:<package> (or random_init=true)")


def build_model(model_cfg, task: TaskData, max_length: int = 128) -> ModelBundle:
    check_fits(model_cfg, task.modality)
    if model_cfg.arch == "vision":
        from .vision import build_vision_bundle

        return build_vision_bundle(model_cfg, task)
    from .text import build_text_bundle

    return build_text_bundle(model_cfg, task, max_length)


__all__ = ["ModelBundle", "ModelLoadError", "build_model", "check_fits"]
