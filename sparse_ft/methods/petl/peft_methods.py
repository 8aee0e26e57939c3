"""Prompt tuning (Lester et al. 2021) and (IA)³ (Liu et al. 2022) through Hugging Face peft: the
READ paper's prompt-tuning baseline and a second multiplicative PETL baseline.

As for `method=lora` (whose key mapping this module reuses), the newly initialised task head is
trained in full (peft `modules_to_save`), and `export` returns the base model's layout:

- prompt tuning: the backbone unchanged + the trained head; the virtual-token embeddings are
  `params.added` and written to `prompt.safetensors` (they cannot be merged into any weight, so
  `job=evaluate` on the exported checkpoint scores the model without its prompt);
- (IA)³: the learned vectors l rescale the keys, the values and the feed-forward block's inner
  activation, as Liu et al. define it (`IA3_TARGETS`: explicit per model family, not peft's
  default mapping, which also rescales BERT's attention.output.dense and OPT's queries instead of
  its values), and *are* merged into those weights (W·diag(l) / diag(l)·W) on a copy of the
  model, so the final checkpoint reproduces the run; `method_report.merged_entries` counts the
  weight entries the merge rewrote.

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
        heads = sorted({n.rsplit(".", 1)[0] for n in new_params(bundle, self.name)}) if self.opts.get("train_head", True) else []
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
        from ...core.io import save_tensors

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


# (IA)^3 (Liu et al. 2022, §3.3): l_k ⊙ keys, l_v ⊙ values (every attention, T5's cross-attention
# too) and l_ff ⊙ γ(W1 x), the feed-forward block's inner activation, which is the *input* of its
# second projection (peft's "feedforward" modules: input rescaled). model_type -> (targets,
# feed-forward targets), dotted module-name suffixes as regexes matched against the whole name.
IA3_TARGETS = {
    "bert": ([r"layer\.\d+\.attention\.self\.key", r"layer\.\d+\.attention\.self\.value", r"layer\.\d+\.output\.dense"], [r"layer\.\d+\.output\.dense"]),
    "t5": ([r"block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)\.k", r"block\.\d+\.layer\.\d+\.(SelfAttention|EncDecAttention)\.v",
            r"block\.\d+\.layer\.\d+\.DenseReluDense\.wo"], [r"block\.\d+\.layer\.\d+\.DenseReluDense\.wo"]),
    "opt": ([r"layers\.\d+\.self_attn\.k_proj", r"layers\.\d+\.self_attn\.v_proj", r"layers\.\d+\.fc2"], [r"layers\.\d+\.fc2"]),
}
IA3_TARGETS["roberta"] = IA3_TARGETS["xlm-roberta"] = IA3_TARGETS["bert"]


def suffix_regex(parts: list[str], escape: bool = False) -> str:
    """One regex that peft full-matches against a module name: any of `parts` as its dotted suffix."""
    alts = "|".join(re.escape(p) if escape else p for p in parts)
    return rf"(.*\.)?(?:{alts})"


@dataclass
class IA3Options(MethodOptions):
    target_modules: list | None = option(None, "modules rescaled by learned vectors (dotted name suffixes); null = (IA)³'s own: keys, values and the feed-forward inner activation per model family (BERT/RoBERTa attention.self.key/value + layer.N.output.dense input, T5 k/v + DenseReluDense.wo input, OPT k_proj/v_proj + fc2 input)")
    feedforward_modules: list | None = option(None, "which targets are feed-forward (their input is rescaled, not their output); null = the family's second FFN projection (with target_modules set: none)")
    train_head: bool = option(True, "train the newly initialised task head in full (peft modules_to_save)")

    def check(self) -> None:
        if self.feedforward_modules and not self.target_modules:
            raise ConfigError("method.feedforward_modules", "needs method.target_modules (it must be a subset of them)")
        if self.feedforward_modules and not set(self.feedforward_modules) <= set(self.target_modules):
            raise ConfigError("method.feedforward_modules", f"{sorted(set(self.feedforward_modules) - set(self.target_modules))} not in method.target_modules")


@register("ia3")
class IA3(PeftMethod):
    """(IA)³ through peft: learned rescaling vectors, merged into the weights on export; head trained."""

    name = "ia3"
    Options = IA3Options
    side_file = "ia3.safetensors"
    mergeable = True

    def peft_config(self, bundle, heads):
        from peft import IA3Config

        if self.opts.target_modules:  # the user's: exact dotted suffixes (peft's list form matches
            # feed-forward names by bare endswith, so "output.dense" would catch attention.output.dense)
            targets = suffix_regex(list(self.opts.target_modules), escape=True)
            ff = suffix_regex(list(self.opts.feedforward_modules), escape=True) if self.opts.feedforward_modules else r"(?!)"
        else:
            model_type = getattr(getattr(bundle.module, "config", None), "model_type", None)
            if model_type not in IA3_TARGETS:
                raise ConfigError("method.target_modules", f"(IA)³ knows the keys, values and feed-forward activation of {', '.join(sorted(IA3_TARGETS))} models, "
                                  f"not {type(bundle.module).__name__} ({model_type!r}): set method.target_modules (and method.feedforward_modules)")
            parts, ff_parts = IA3_TARGETS[model_type]
            targets, ff = suffix_regex(parts), suffix_regex(ff_parts)
        return IA3Config(target_modules=targets, feedforward_modules=ff, modules_to_save=list(heads) or None)

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
