"""Houlsby adapters (Houlsby et al. 2019), the sequential variant the READ paper compares with.

Two bottleneck MLPs per transformer layer, one in the attention sublayer and one in the
feed-forward sublayer, each inside its sublayer's residual: y ↦ y + W_up·act(W_down·y + b_down)
+ b_up, with W_up and b_up zero-initialised so that the untrained model is exactly the pretrained
one. As in the paper (their Figure 2), the adapter reads the sublayer's output *after its
dropout*, before the residual add and the layer norm, and the layer norms train too
(`train_layer_norms=true`); the rest of the backbone is frozen and the new task head trains.
`placement=after_projection` (the adapter on the output projection, before the dropout) and
`train_layer_norms=false` keep this project's earlier variant.

The adapters are not written into the backbone: they are forward hooks and live in a module of
their own. After the dropout: BERT/RoBERTa/MiniLM `attention.output.dropout` + `layer.N.output.dropout`,
T5 the dropout of each self-attention and feed-forward sublayer (T5LayerSelfAttention /
T5LayerFF); OPT applies its dropout functionally (no module to hook), so there the adapter hooks
`self_attn.out_proj` / `fc2` and applies the layer's dropout itself, with the layer's own dropout
set to 0 (the same computation, dropout then adapter). After the projection: `attention.output.dense`
+ `output.dense`, T5 `SelfAttention.o` + `DenseReluDense.wo`, OPT `self_attn.out_proj` + `fc2`.
So `export` returns the backbone's state dict unchanged in layout (nothing merges: an adapter is
non-linear), holding the trained head and layer norms; the adapters are written to
`adapters.safetensors` and counted in `params.added`. `job=evaluate` on the exported checkpoint
scores the model without its adapters.
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
# after the sublayer's dropout: the dropout modules (BERT family: name regexes; T5: the
# sublayer classes whose `.dropout` is hooked); OPT's dropout is functional (see the docstring)
DROPOUTS = {
    "bert": (r"\.attention\.output\.dropout$", r"\.layer\.\d+\.output\.dropout$"),
    "roberta": (r"\.attention\.output\.dropout$", r"\.layer\.\d+\.output\.dropout$"),
    "xlm-roberta": (r"\.attention\.output\.dropout$", r"\.layer\.\d+\.output\.dropout$"),
}
T5_SUBLAYERS = ("T5LayerSelfAttention", "T5LayerFF")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}
LAYER_NORM = re.compile(r"(layer_?norm|LayerNorm|final_layer_norm)", re.I)


@dataclass
class AdapterOptions(MethodOptions):
    bottleneck: int = option(64, "adapter bottleneck width (the READ paper's grid: 32, 64)", low=1)
    activation: str = option("relu", "non-linearity inside the bottleneck", choices=tuple(ACTIVATIONS))
    places: str = option("both", "where adapters go: both (after attention and after the feed-forward block, Houlsby) | attention | ffn",
                         choices=("both", "attention", "ffn"))
    placement: str = option("after_dropout", "after_dropout: the adapter reads the sublayer's output after its dropout, before the residual add + layer norm (Houlsby et al.) | after_projection: on the output projection, before the dropout (this project's earlier variant)",
                            choices=("after_dropout", "after_projection"))
    train_layer_norms: bool = option(True, "train the backbone's layer-norm weights and biases too (Houlsby et al.); they then change in the export. false = only adapters + head")
    train_head: bool = option(True, "train the newly initialised task head in full")


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int, activation: str, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()  # OPT: the layer's own dropout, moved here
        self.down = nn.Linear(width, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # near-identity: the untrained adapter adds nothing
        nn.init.zeros_(self.up.bias)

    def forward(self, y):
        y = self.drop(y)
        return y + self.up(self.act(self.down(y.to(self.down.weight.dtype)))).to(y.dtype)


class AdapterModel(nn.Module):
    """The backbone with adapters hooked onto its sublayers (state: backbone.*, adapters.*).
    `targets`: (module name, width, dropout moved into the hook) per adapter site."""

    def __init__(self, backbone: nn.Module, targets: list[tuple[str, int, float]], opts: AdapterOptions):
        super().__init__()
        self.backbone = backbone
        self.targets = [name for name, _, _ in targets]
        self.adapters = nn.ModuleDict()
        modules = dict(backbone.named_modules())
        self._hooks = []
        for name, width, dropout in targets:
            adapter = Bottleneck(width, opts.bottleneck, opts.activation, dropout)
            self.adapters[name.replace(".", "__")] = adapter
            self._hooks.append(modules[name].register_forward_hook(lambda m, args, out, a=adapter: a(out)))

    def forward(self, *args, **kwargs):
        return self.backbone(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.backbone.generate(*args, **kwargs)


def model_width(module: nn.Module) -> int:
    config = module.config
    return int(getattr(config, "d_model", None) or config.hidden_size)


def adapter_targets(module: nn.Module, places: str, placement: str = "after_projection") -> list[tuple[str, int, float]]:
    """(module to hook, adapter width, dropout the hook applies first) for each adapter; width 0: no
    adapter, only the dropout (OPT, a sublayer `places` leaves out). OPT after the dropout: sets each
    decoder layer's own dropout to 0 (the hooks apply it)."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type not in PLACES:
        raise ConfigError("model", f"method=adapter knows where adapters go in {', '.join(sorted(PLACES))} models, not {type(module).__name__} ({model_type!r})")
    which = {"both": (0, 1), "attention": (0,), "ffn": (1,)}[places]
    out: list[tuple[str, int, float]] = []
    if placement == "after_projection":
        patterns = [PLACES[model_type][i] for i in which]
        out = [(n, m.out_features, 0.0) for n, m in module.named_modules() if isinstance(m, nn.Linear) and any(re.search(p, "." + n) for p in patterns)]
    elif model_type in DROPOUTS:
        patterns = [DROPOUTS[model_type][i] for i in which]
        out = [(n, model_width(module), 0.0) for n, m in module.named_modules() if isinstance(m, nn.Dropout) and any(re.search(p, "." + n) for p in patterns)]
    elif model_type == "t5":
        classes = [T5_SUBLAYERS[i] for i in which]
        out = [(f"{n}.dropout", model_width(module), 0.0) for n, m in module.named_modules() if type(m).__name__ in classes]
    elif model_type == "opt":  # functional dropout: the hooks on out_proj / fc2 apply it, the layer's is set to 0
        for n, layer in module.named_modules():
            if type(layer).__name__ != "OPTDecoderLayer":
                continue
            p, layer.dropout = float(layer.dropout), 0.0
            for j, site in enumerate(("self_attn.out_proj", "fc2")):
                name = f"{n}.{site}"
                # a site without an adapter keeps its dropout through a hook of its own
                out.append((name, model_width(module), p) if j in which else (name, 0, p))
    if not [t for t in out if t[1]]:
        raise ConfigError("model", f"method=adapter found no {places} sublayer ({placement}) in {type(module).__name__}")
    return out


def _keep_dropout(backbone: nn.Module, name: str, p: float):
    """OPT, an adapter-less sublayer (places=attention|ffn): the dropout moved out of the layer."""
    drop = nn.Dropout(p)
    module = dict(backbone.named_modules())[name]
    module._moved_dropout = drop  # a submodule: follows train()/eval()
    return module.register_forward_hook(lambda m, args, out: m._moved_dropout(out))


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
        self.heads = freeze_backbone(bundle, train_head=self.opts.train_head, method=self.name)
        if self.opts.train_layer_norms:
            for name, p in backbone.named_parameters():
                if LAYER_NORM.search(name):
                    p.requires_grad_(True)
        targets = adapter_targets(backbone, self.opts.places, self.opts.placement)
        self._dropout_hooks = [_keep_dropout(backbone, n, p) for n, width, p in targets if not width]
        self.model = AdapterModel(backbone, [t for t in targets if t[1]], self.opts)
        self._added = sum(p.numel() for p in self.model.adapters.parameters())
        return replace(bundle, module=self.model)

    def added_count(self) -> int:
        return self._added

    def export(self, module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.backbone.state_dict().items()}

    def finalize(self, module: nn.Module, run_dir: Path) -> dict:
        from ...core.io import save_tensors

        tensors = {k: v.detach() for k, v in self.model.adapters.state_dict().items()}
        return {self.side_file: save_tensors(tensors, Path(run_dir) / self.side_file, {"method": self.name, "options": repr(self.opts)})}

    def report(self) -> dict:
        targets = sorted({re.sub(r"\.\d+\.", ".*.", t) for t in self.model.targets})
        return {"bottleneck": self.opts.bottleneck, "placement": self.opts.placement, "train_layer_norms": self.opts.train_layer_norms,
                "adapters": len(self.model.targets), "adapted_modules": targets,
                "adapter_params": self._added, "trained_heads": self.heads, "side_file": self.side_file}
