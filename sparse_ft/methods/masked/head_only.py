"""Head only: the frozen pretrained backbone with a trained task head (the floor of the PETL
methods and READ in the reproduction report, issue 24: what a method must beat to show that it
adapted the backbone at all).

Only the newly initialised task head (`models.heads.head_names`: everything outside the Hugging Face
model's pretrained body, or torchvision's `fc`) trains; every backbone parameter stays
bit-identical. Models without a new head (text-to-text T5, whose LM head is pretrained) are
refused with a clear error.
"""

from __future__ import annotations

from ...core.errors import ConfigError
from ..registry import register
from .masking import MaskedMethod


@register("head_only")
class HeadOnly(MaskedMethod):
    name = "head_only"
    refreshable = False  # the head is the head

    def __init__(self, cfg):
        super().__init__(cfg)
        if not self.opts.classifier_in_mask:
            raise ConfigError("method.classifier_in_mask", "false leaves head_only nothing to train; the head is its whole mask")

    def select(self, module, ctx, head, k, round=0):
        if not head:
            raise ConfigError("method.name", f"head_only: {type(module).__name__} has no newly initialised task head "
                                             "(text-to-text models reuse their pretrained LM head), so there is nothing to train")
        self.stats.update(source="head", head_tensors=len(head))
        return {}
