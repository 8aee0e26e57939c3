"""BitFit (Ben Zaken et al. 2022): train only the bias terms (and the new head), exactly.

Every parameter named `*.bias` (attention, feed-forward, LayerNorm, BatchNorm biases) is trained
in full; everything else stays bit-identical to the pretrained weights. Models without bias
terms (T5) cannot run BitFit: a clear error, no silent fallback.
"""

from __future__ import annotations

from ...core.errors import ConfigError
from .masking import MaskedMethod, full_mask, named_params
from ..registry import register


def bias_names(module) -> list[str]:
    return [n for n in named_params(module) if n.rsplit(".", 1)[-1] == "bias"]


@register("bitfit")
class BitFit(MaskedMethod):
    name = "bitfit"
    refreshable = False  # the biases are the biases, whatever the weights

    def select(self, module, ctx, head, k, round=0):
        biases = [n for n in bias_names(module) if n not in head]
        if not biases:
            raise ConfigError(
                "method.name",
                f"bitfit: {type(module).__name__} has no bias terms (T5 models have none), so BitFit has nothing to train; "
                "use method=fish, random_mask or diff_pruning",
            )
        self.stats.update(source="biases", bias_tensors=len(biases))
        return full_mask(module, biases)
