"""LoRA (Hu et al. 2022) through Hugging Face peft: W + (α/r)·B·A on the attention projections,
the rest of the backbone frozen, the new task head trained in full.

peft leaves a newly initialised classifier head frozen unless it is named in `modules_to_save`,
so the head (the parameters outside the pretrained body, as for the masked methods) is always
listed there. `export` merges B·A into the base weights and returns the base model's names, so
the final checkpoint loads into the plain model and `params.updated` counts entries as for any
other method; the A/B matrices are reported as `params.added`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import Method, MethodContext
from ..masked.masking import head_names
from ..registry import register

ADAPTER = "default"


@dataclass
class LoraOptions(MethodOptions):
    r: int = option(8, "rank of the update B·A (the READ paper's grid: 8, 32)", low=1)
    alpha: float = option(16.0, "scaling α: the update is (α/r)·B·A", low=0, low_open=True)
    dropout: float = option(0.0, "dropout on the LoRA branch's input", low=0, high=1, high_open=True)
    target_modules: list | None = option(None, "module names to adapt; null = peft's default for the architecture (BERT query/value, T5 q/v, OPT q_proj/v_proj)")
    bias: str = option("none", "none | all | lora_only: which biases train (peft's `bias`)", choices=("none", "all", "lora_only"))
    train_head: bool = option(True, "train the newly initialised task head in full (peft modules_to_save)")


def base_name(key: str) -> str | None:
    """A wrapped state-dict key in the base model's naming, or None for LoRA's own tensors and
    peft's frozen copy of a saved module."""
    if ".lora_" in key or ".original_module." in key:
        return None
    return key.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")


@register("lora")
class Lora(Method):
    name = "lora"
    Options = LoraOptions

    def wrap(self, bundle, ctx: MethodContext):
        from peft import LoraConfig, get_peft_model

        module = bundle.module
        heads = sorted({n.rsplit(".", 1)[0] for n in head_names(module)}) if self.opts.train_head else []
        config = LoraConfig(
            r=self.opts.r, lora_alpha=self.opts.alpha, lora_dropout=self.opts.dropout, bias=self.opts.bias,
            target_modules=list(self.opts.target_modules) if self.opts.target_modules else None,
            modules_to_save=heads or None,
        )
        try:
            peft_model = get_peft_model(module, config)
        except ValueError as err:  # e.g. no default target modules for this architecture
            raise ConfigError("method.target_modules", f"peft could not place LoRA on {type(module).__name__}: {err}") from err
        self.inner = peft_model.base_model.model  # the original module, LoRA layers injected in place
        self.heads = heads
        self._added = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
        return replace(bundle, module=peft_model)

    def added_count(self) -> int:
        return self._added

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        merged = {}
        for key, value in self.inner.state_dict().items():
            name = base_name(key)
            if name is not None:
                merged[name] = value.detach().clone()
        for prefix, layer in self._lora_layers():
            key = f"{prefix}.weight"
            delta = layer.get_delta_weight(ADAPTER).detach()
            merged[key] = (merged[key] + delta.to(merged[key].dtype)).contiguous()
        return merged

    def report(self) -> dict:
        targets = sorted({re.sub(r"\.\d+\.", ".*.", p) for p, _ in self._lora_layers()})
        merged = sum(m.base_layer.weight.numel() for _, m in self._lora_layers())
        return {"rank": self.opts.r, "alpha": self.opts.alpha, "adapted_modules": targets, "trained_heads": self.heads,
                "merged_entries": merged}

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [(p, m) for p, m in self.inner.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]
