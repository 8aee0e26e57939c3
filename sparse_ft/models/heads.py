"""Model facts the methods and jobs read: which parameters form a newly initialised task head."""

from __future__ import annotations

from torch import nn


def head_names(module: nn.Module) -> list[str]:
    """Parameters of a newly initialised task head, in module order (tied ones once): outside the
    pretrained body of a Hugging Face model (``base_model_prefix``; none for text-to-text models,
    whose LM head is pretrained), or torchvision's ``fc``."""
    names = list(dict(module.named_parameters()))
    config = getattr(module, "config", None)
    prefix = getattr(module, "base_model_prefix", None)
    if config is not None:
        if getattr(config, "is_encoder_decoder", False) or not prefix or not isinstance(getattr(module, prefix, None), nn.Module):
            return []
        return [n for n in names if not n.startswith(prefix + ".")]
    fc = getattr(module, "fc", None)
    if isinstance(fc, nn.Linear):
        return [n for n in names if n.startswith("fc.")]
    return []
