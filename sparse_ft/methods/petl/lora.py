"""LoRA (Hu et al. 2022) through Hugging Face peft: W + (α/r)·B·A on the attention projections,
the rest of the backbone frozen, the new task head trained in full.

peft leaves a newly initialised classifier head frozen unless it is named in `modules_to_save`,
so the head (the parameters outside the pretrained body, as for the masked methods) is always
listed there. `export` merges B·A into the base weights and returns the base model's names, so
the final checkpoint loads into the plain model and `params.updated` counts entries as for any
other method; the A/B matrices are reported as `params.added`.

LoRA on a pruned model: `python run.py method=lora method.init_from=<pruned run dir>` (e.g. a
`method=omp` run) starts from that run's final weights and keeps its pruning mask M through the
merge: the adapted layers compute with W + M ⊙ (α/r)·B·A (the update's dense product, masked, so
training sees exactly the model that is exported) and the final checkpoint holds
W + M ⊙ (α/r)·B·A with the pruned entries +0.0; summary.json `sparsity` is measured on it
(methods/start.py; tests/methods/pruning/test_lora_on_pruned.py). `params.updated` still counts
against the pretrained weights, so the source run's changes are in it too.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import Method, MethodContext
from ..registry import register
from .side import new_params

ADAPTER = "default"
# target_modules=null for an architecture peft has no default for: the attention query/value
# projections, as peft's BERT default (transformers 5 names them q_proj / v_proj in ViT / DINO)
DEFAULT_TARGETS = {"vit": ["q_proj", "v_proj"]}


@dataclass
class LoraOptions(MethodOptions):
    r: int = option(8, "rank of the update B·A (the READ paper's grid: 8, 32)", low=1)
    alpha: float = option(16.0, "scaling α: the update is (α/r)·B·A", low=0, low_open=True)
    dropout: float = option(0.0, "dropout on the LoRA branch's input", low=0, high=1, high_open=True)
    target_modules: list | None = option(None, "module names to adapt; null = peft's default for the architecture (BERT query/value, T5 q/v, OPT q_proj/v_proj; ViT/DINO q_proj/v_proj, the query/value projections)")
    bias: str = option("none", "none | all | lora_only: which biases train (peft's `bias`)", choices=("none", "all", "lora_only"))
    train_head: bool = option(True, "train the newly initialised task head in full (peft modules_to_save)")
    init_from: str | None = option(None, "a finished run directory to start from (its final weights); a pruning run's mask "
                                          "(prune_mask.safetensors) is then applied to the LoRA update, so the merged model keeps its zeros")

    def check(self) -> None:
        if self.init_from is not None:
            from ..start import check_start

            check_start(self.init_from)


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
        self.start = None
        if self.opts.init_from is not None:
            from ..start import load_start

            self.start = load_start(module, self.opts.init_from, getattr(ctx.model_cfg, "get", lambda *_: None)("name"))
        heads = sorted({n.rsplit(".", 1)[0] for n in new_params(bundle, self.name)}) if self.opts.train_head else []
        config = LoraConfig(
            r=self.opts.r, lora_alpha=self.opts.alpha, lora_dropout=self.opts.dropout, bias=self.opts.bias,
            target_modules=list(self.opts.target_modules) if self.opts.target_modules else
            DEFAULT_TARGETS.get(getattr(getattr(module, "config", None), "model_type", None)),
            modules_to_save=heads or None,
        )
        try:
            peft_model = get_peft_model(module, config)
        except ValueError as err:  # e.g. no default target modules for this architecture
            raise ConfigError("method.target_modules", f"peft could not place LoRA on {type(module).__name__}: {err}") from err
        self.inner = peft_model.base_model.model  # the original module, LoRA layers injected in place
        self.heads = heads
        self._added = sum(p.numel() for n, p in peft_model.named_parameters() if ".lora_" in n)
        self._mask_updates()
        return replace(bundle, module=peft_model)

    def _keep(self, prefix: str) -> torch.Tensor | None:
        keep = self.start.keep if getattr(self, "start", None) is not None else None
        return None if keep is None else keep.get(f"{prefix}.weight")

    def _mask_updates(self) -> None:
        """Adapted layers whose weight the source run pruned compute with W + M ⊙ ΔW."""
        for prefix, layer in self._lora_layers():
            keep = self._keep(prefix)
            if keep is not None:
                layer.register_buffer("prune_keep", keep.to(layer.base_layer.weight.device), persistent=False)  # follows .to(device)
                layer.forward = functools.partial(_masked_forward, layer)

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
            keep = self._keep(prefix)
            if keep is not None:  # the pruned entries stay exact zeros in the merged weight
                from ..start import mask_update

                merged[key] = mask_update(merged[key] + mask_update(delta, keep).to(merged[key].dtype), keep).contiguous()
            else:
                merged[key] = (merged[key] + delta.to(merged[key].dtype)).contiguous()
        return merged

    def finalize(self, module: nn.Module, run_dir) -> dict:
        """With a pruned start: the mask beside the merged checkpoint (prune_mask.safetensors)
        and the sparsity measured on the merged weights."""
        if getattr(self, "start", None) is None or self.start.keep is None:
            return {}
        from ..start import save_start_mask, sparsity_block

        self._sparsity = sparsity_block(self.export(module), self.start, [n for n, _ in self.inner.named_parameters()])
        return save_start_mask(run_dir, self.start, self.name)

    def summary_blocks(self) -> dict:
        block = getattr(self, "_sparsity", None)
        return {"sparsity": block} if block is not None else {}

    def report(self) -> dict:
        targets = sorted({re.sub(r"\.\d+\.", ".*.", p) for p, _ in self._lora_layers()})
        merged = sum(m.base_layer.weight.numel() for _, m in self._lora_layers())
        out = {"rank": self.opts.r, "alpha": self.opts.alpha, "adapted_modules": targets, "trained_heads": self.heads,
               "merged_entries": merged}
        if getattr(self, "start", None) is not None:
            out["start"] = self.start.report()
            if getattr(self, "_sparsity", None) is not None:
                out["sparsity"] = self._sparsity
        return out

    def _lora_layers(self):
        from peft.tuners.lora import LoraLayer

        return [(p, m) for p, m in self.inner.named_modules() if isinstance(m, LoraLayer) and ADAPTER in m.lora_A]


def _masked_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's LoRA Linear forward with the update masked: base(x) + dropout(x) @ (M ⊙ ΔW)ᵀ, where
    ΔW = (α/r)·B·A (`get_delta_weight`, which keeps the graph)."""
    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters or layer.merged:
        return result
    dtype = result.dtype
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        delta = layer.get_delta_weight(name).masked_fill(~layer.prune_keep, 0.0)
        result = result + F.linear(layer.lora_dropout[name](x).to(delta.dtype), delta)
    return result.to(dtype)
