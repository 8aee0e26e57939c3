"""Houlsby adapters (Houlsby et al. 2019), the sequential variant the READ paper compares with.

Two bottleneck MLPs per transformer layer, one after the attention block's output projection and
one after the feed-forward block's output projection, each inside its sublayer's residual:
y ↦ y + W_up·act(W_down·y + b_down) + b_up, with W_up and b_up zero-initialised so that the
untrained model is exactly the pretrained one. The backbone is frozen; the adapters and the new
task head train (`method.train_layer_norms=true` also trains the layer norms, as Houlsby did).

The adapters are not written into the backbone: they are forward hooks on the output
projections (BERT/RoBERTa/MiniLM `attention.output.dense` + `output.dense`, T5 `SelfAttention.o`
+ `DenseReluDense.wo`, OPT `self_attn.out_proj` + `fc2`) and live in a module of their own. So
`export` returns the backbone's state dict unchanged in layout (nothing merges: an adapter is
non-linear), holding the trained head; the adapters are written to `adapters.safetensors` and
counted in `params.added`. `job=evaluate` on the exported checkpoint scores the model without
its adapters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..base import Method, MethodContext
from ..registry import register
from .side import freeze_backbone

# model_type -> (attention output projection, feed-forward output projection), module-name regexes
PLACES = {
    "bert": (r"\.attention\.output\.dense$", r"\.layer\.\d+\.output\.dense$"),
    "roberta": (r"\.attention\.output\.dense$", r"\.layer\.\d+\.output\.dense$"),
    "xlm-roberta": (r"\.attention\.output\.dense$", r"\.layer\.\d+\.output\.dense$"),
    "t5": (r"\.SelfAttention\.o$", r"\.DenseReluDense\.wo$"),
    "opt": (r"\.self_attn\.out_proj$", r"\.fc2$"),
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}
LAYER_NORM = re.compile(r"(layer_?norm|LayerNorm|final_layer_norm)", re.I)


@dataclass
class AdapterOptions(MethodOptions):
    bottleneck: int = option(64, "adapter bottleneck width (the READ paper's grid: 32, 64)", low=1)
    activation: str = option("relu", "non-linearity inside the bottleneck", choices=tuple(ACTIVATIONS))
    places: str = option("both", "where adapters go: both (after attention and after the feed-forward block, Houlsby) | attention | ffn",
                         choices=("both", "attention", "ffn"))
    train_layer_norms: bool = option(False, "also train the backbone's layer-norm weights (Houlsby et al. did); they then change in the export")
    train_head: bool = option(True, "train the newly initialised task head in full")


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # near-identity: the untrained adapter adds nothing
        nn.init.zeros_(self.up.bias)

    def forward(self, y):
        return y + self.up(self.act(self.down(y.to(self.down.weight.dtype)))).to(y.dtype)


class AdapterModel(nn.Module):
    """The backbone with adapters hooked onto its output projections (state: backbone.*, adapters.*)."""

    def __init__(self, backbone: nn.Module, targets: list[str], opts: AdapterOptions):
        super().__init__()
        self.backbone = backbone
        self.targets = targets
        self.adapters = nn.ModuleDict()
        modules = dict(backbone.named_modules())
        self._hooks = []
        for name in targets:
            linear = modules[name]
            adapter = Bottleneck(linear.out_features, opts.bottleneck, opts.activation)
            self.adapters[name.replace(".", "__")] = adapter
            self._hooks.append(linear.register_forward_hook(lambda m, args, out, a=adapter: a(out)))

    def forward(self, *args, **kwargs):
        return self.backbone(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.backbone.generate(*args, **kwargs)


def adapter_targets(module: nn.Module, places: str) -> list[str]:
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type not in PLACES:
        raise ConfigError("model", f"method=adapter knows where adapters go in {', '.join(sorted(PLACES))} models, not {type(module).__name__} ({model_type!r})")
    attention, ffn = PLACES[model_type]
    patterns = {"both": [attention, ffn], "attention": [attention], "ffn": [ffn]}[places]
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and any(re.search(p, "." + n) for p in patterns)]
    if not names:
        raise ConfigError("model", f"method=adapter found no {places} output projection in {type(module).__name__}")
    return names


@register("adapter")
class Adapter(Method):
    """Houlsby adapters after attention and feed-forward blocks; backbone frozen, head trained."""

    name = "adapter"
    Options = AdapterOptions
    side_file = "adapters.safetensors"

    def wrap(self, bundle, ctx: MethodContext):
        if bundle.arch not in ("encoder", "decoder", "seq2seq"):
            raise ConfigError("model", f"method=adapter runs on text models, not {bundle.arch}")
        backbone = bundle.module
        self.heads = freeze_backbone(backbone, train_head=self.opts.train_head, method=self.name)
        if self.opts.train_layer_norms:
            for name, p in backbone.named_parameters():
                if LAYER_NORM.search(name):
                    p.requires_grad_(True)
        self.model = AdapterModel(backbone, adapter_targets(backbone, self.opts.places), self.opts)
        self._added = sum(p.numel() for p in self.model.adapters.parameters())
        return replace(bundle, module=self.model)

    def added_count(self) -> int:
        return self._added

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        from ...train.checkpoint import save_tensors

        tensors = {k: v.detach() for k, v in self.model.adapters.state_dict().items()}
        return {self.side_file: save_tensors(tensors, Path(run_dir) / self.side_file, {"method": self.name, "options": repr(self.opts)})}

    def report(self) -> dict:
        targets = sorted({re.sub(r"\.\d+\.", ".*.", t) for t in self.model.targets})
        return {"bottleneck": self.opts.bottleneck, "adapters": len(self.model.targets), "adapted_modules": targets,
                "adapter_params": self._added, "trained_heads": self.heads, "side_file": self.side_file}
