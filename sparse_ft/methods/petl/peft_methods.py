"""Prompt tuning (Lester et al. 2021) and (IA)³ (Liu et al. 2022) through Hugging Face peft: the
READ paper's prompt-tuning baseline and a second multiplicative PETL baseline.

As for `method=lora` (whose key mapping this module reuses), the newly initialised task head is
trained in full (peft `modules_to_save`), and `export` returns the base model's layout:

- prompt tuning: the backbone unchanged + the trained head; the virtual-token embeddings are
  `params.added` and written to `prompt.safetensors` (they cannot be merged into any weight, so
  `job=evaluate` on the exported checkpoint scores the model without its prompt);
- (IA)³: the learned vectors l rescale keys, values and the feed-forward input (peft's per
  architecture default) and *are* merged into those weights (W·diag(l) / diag(l)·W) on a copy of
  the model, so the final checkpoint reproduces the run; `method_report.merged_entries` counts
  the weight entries the merge rewrote.

Decoder-only classifiers (OPT) read the last non-pad token, which Hugging Face finds from
`input_ids`; under prompt tuning the model only sees embeddings, so each row is shifted to left
padding first (positions follow the attention mask, so the model computes the same thing) and
the head then reads the last position.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import Method, MethodContext
from ..registry import register
from .lora import base_name
from .side import new_params


class LeftPadded(nn.Module):
    """Moves each row's padding to the left before calling `inner` (prompt tuning on OPT)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if input_ids is not None and attention_mask is not None:
            order = torch.argsort((attention_mask != 0).long(), dim=1, stable=True)  # pads first, tokens in order
            input_ids = torch.gather(input_ids, 1, order)
            attention_mask = torch.gather(attention_mask, 1, order)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class PeftMethod(Method):
    """Shared by the peft-based methods: wrap, export in the base layout, added/merged counts."""

    side_file = "peft.safetensors"
    mergeable = False

    def peft_config(self, bundle, heads: list[str]):
        raise NotImplementedError

    def wrap(self, bundle, ctx: MethodContext):
        from peft import get_peft_model

        if bundle.arch not in ("encoder", "decoder", "seq2seq"):
            raise ConfigError("model", f"method={self.name} runs on text models, not {bundle.arch}")
        module = bundle.module
        heads = sorted({n.rsplit(".", 1)[0] for n in new_params(module, self.name)}) if self.opts.get("train_head", True) else []
        config = self.peft_config(bundle, heads)
        try:
            self.peft_model = get_peft_model(module, config)
        except ValueError as err:
            raise ConfigError("model", f"peft could not apply {self.name} to {type(module).__name__}: {err}") from err
        self.inner = self.peft_model.get_base_model()
        self.heads = heads
        self._added = sum(p.numel() for n, p in self.peft_model.named_parameters() if self.is_added(n))
        wrapped = self.peft_model
        if bundle.arch == "decoder" and getattr(config, "is_prompt_learning", False):
            wrapped = LeftPadded(self.peft_model)
        return replace(bundle, module=wrapped)

    def is_added(self, name: str) -> bool:
        raise NotImplementedError

    def added_count(self) -> int:
        return self._added

    def added_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.peft_model.named_parameters() if self.is_added(n)}

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        if self.mergeable:
            merged = copy.deepcopy(self.peft_model).merge_and_unload()
            return {k: v.detach().clone() for k, v in merged.state_dict().items()}
        out = {}
        for key, value in self.inner.state_dict().items():
            name = base_name(key)
            if name is not None and not self.is_added(key):
                out[name] = value.detach().clone()
        return out

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        from ...train.checkpoint import save_tensors

        return {self.side_file: save_tensors(self.added_state(), Path(run_dir) / self.side_file, {"method": self.name, "options": repr(self.opts)})}


# --- prompt tuning ------------------------------------------------------------------------------


@dataclass
class PromptTuningOptions(MethodOptions):
    num_virtual_tokens: int = option(20, "length of the soft prompt prepended to the input embeddings (READ paper grid: 10, 20, 30)", low=1)
    init: str = option("sample_vocab", "prompt initialisation: sample_vocab (embeddings of random vocabulary tokens) | random", choices=("sample_vocab", "random"))
    train_head: bool = option(True, "train the newly initialised task head in full (peft modules_to_save; peft always adds it for classifiers)")


@register("prompt_tuning")
class PromptTuning(PeftMethod):
    """Prompt tuning through peft: trainable virtual tokens before the input; head trained."""

    name = "prompt_tuning"
    Options = PromptTuningOptions
    side_file = "prompt.safetensors"

    def peft_config(self, bundle, heads):
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        task_type = TaskType.SEQ_2_SEQ_LM if bundle.arch == "seq2seq" else TaskType.SEQ_CLS
        init = PromptTuningInit.SAMPLE_VOCAB if self.opts.init == "sample_vocab" else PromptTuningInit.RANDOM
        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.opts.num_virtual_tokens, prompt_tuning_init=init,
                                  modules_to_save=list(heads) or None)

    def is_added(self, name: str) -> bool:
        return "prompt_encoder." in name

    def report(self) -> dict:
        return {"num_virtual_tokens": self.opts.num_virtual_tokens, "prompt_params": self._added, "trained_heads": self.heads,
                "side_file": self.side_file}


# --- (IA)^3 -------------------------------------------------------------------------------------


@dataclass
class IA3Options(MethodOptions):
    target_modules: list | None = option(None, "modules rescaled by learned vectors; null = peft's default (BERT key/value/output.dense, T5 k/v/wo, OPT q_proj/k_proj/fc2)")
    feedforward_modules: list | None = option(None, "which targets are feed-forward (their input is rescaled, not their output); null = peft's default")
    train_head: bool = option(True, "train the newly initialised task head in full (peft modules_to_save)")

    def check(self) -> None:
        if self.feedforward_modules and not self.target_modules:
            raise ConfigError("method.feedforward_modules", "needs method.target_modules (it must be a subset of them)")


@register("ia3")
class IA3(PeftMethod):
    """(IA)³ through peft: learned rescaling vectors, merged into the weights on export; head trained."""

    name = "ia3"
    Options = IA3Options
    side_file = "ia3.safetensors"
    mergeable = True

    def peft_config(self, bundle, heads):
        from peft import IA3Config

        return IA3Config(
            target_modules=list(self.opts.target_modules) if self.opts.target_modules else None,
            feedforward_modules=list(self.opts.feedforward_modules) if self.opts.feedforward_modules else None,
            modules_to_save=list(heads) or None,
        )

    def is_added(self, name: str) -> bool:
        return ".ia3_l." in name

    def _ia3_layers(self):
        from peft.tuners.ia3 import IA3Layer

        return [(p, m) for p, m in self.inner.named_modules() if isinstance(m, IA3Layer)]

    def report(self) -> dict:
        layers = self._ia3_layers()
        targets = sorted({re.sub(r"\.\d+\.", ".*.", p) for p, _ in layers})
        merged = sum(m.get_base_layer().weight.numel() for _, m in layers)
        return {"adapted_modules": targets, "ia3_params": self._added, "trained_heads": self.heads, "merged_entries": merged,
                "side_file": self.side_file}
