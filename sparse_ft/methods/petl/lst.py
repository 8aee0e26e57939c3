"""LST — Ladder Side-Tuning (Sung et al. 2022), a READ-paper baseline, as in the authors' code
(github.com/ylsung/Ladder-Side-Tuning, `seq2seq/third_party/models/t5/modeling_side_t5.py` and
`scripts/ladder_side_tuning_base.sh`).

A side network of reduced width d_s = d_model / r (`method.reduction`, default 8) runs beside the
frozen backbone, which runs once per batch without autograd (see side.py). Its blocks are the
backbone's own block type at side width: T5 blocks (d_model, d_ff and d_kv divided by r, the same
number of heads, relative position bias in the first side block, shared by the others; the side
decoder's blocks have causal self-attention and cross-attention to the side encoder's output),
BERT / RoBERTa layers, OPT decoder layers (whose position information comes in through ϕ_0, the
embeddings, as in the backbone). With ϕ_0 the stack's input embeddings and ϕ_{i+1} the output of
backbone block i:

  h = down_0(ϕ_0)
  for each side layer i (`method.side_layers`):
      h = g_i · h + (1 − g_i) · down_{i+1}(ϕ_{i+1}),   g_i = sigmoid(α_i / T)  (α_i = 0 at start, T = 0.1)
      h = f_i(h)                                        f_i: the side block of layer i
  out = up(dropout(norm(h)))          (T5: T5 RMS norm; OPT with pre-LN: LayerNorm; BERT: none)

and the head reads `out` alone (the frozen LM head for T5, the new classifier otherwise): the
backbone's last state does not reach it. `up` is an ordinary learned map (not zero-initialised), so
the untrained model is not the backbone.

Side layers (`method.side_layers`): `published` keeps the official scripts' choice — T5-base
(12-layer stacks) layers 1,2,3,5,6,7,9,10,11 of both stacks (every fourth dropped: 1.74% of the
parameters trainable in the LST paper), T5-large (24) the odd layers — and every layer for other
depths and architectures (the paper has no setting for them); `all`, or a list of indices.

Initialisation (`method.init`), the LST paper's §2.2 and the official `load_side_pretrained_weights
fisher-v2`: the side blocks (and the side's final norm) start as the backbone's blocks structurally
pruned to width 1/r. Down the chain embeddings → block 0 → … → final norm, every linear map keeps
the input dimensions the previous one kept and the output rows with the largest L1 norm of the
elementwise product of its group's importances (q, k, v together; T5's gated wi_0, wi_1 together);
norms keep the dimensions of the map before them (the residual stream is not kept consistent:
the official `pruning_without_residual`). The importance is the empirical Fisher (squared
per-example gradients of the task loss, `method.fisher_samples` training examples, official 1024)
for `fisher`, the weights themselves for `magnitude` (official `t5-base-v2`); `random` leaves
the fresh blocks as constructed. The first side block's relative position bias is the backbone's
(T5 keeps all heads). The projections, gates and `up` start random in every case.

Not followed: the official code keeps one gate parameter per backbone layer, including the
dropped ones that never receive a gradient; here only the side layers have gates. The Fisher's
per-example loss is the bundle's (T5: summed over the target tokens; the official code averages
them), which reweights examples of different target lengths but not the parameters of one.

`export` returns the base model's layout (backbone unchanged + trained head); the side network is
`lst_side.safetensors` and `params.added`. The final evaluation uses the side network;
`job=evaluate` on the exported checkpoint scores the backbone and head alone.

The side network (block families, structural pruning, the ladders) is ladder.py; this module is
the method (options, building the side, the Fisher or magnitude initialisation, the report).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

import torch

from ...core.errors import ConfigError
from ...core.options import MethodOptions, option
from ..registry import register
from .ladder import LstSide, family_for, prune_chain
from .side import SideMethod

log = logging.getLogger(__name__)


@dataclass
class LstOptions(MethodOptions):
    reduction: int = option(8, "reduction factor r: side width d_model / r (feed-forward d_ff / r, T5's d_kv / r)", low=1)
    side_layers: Literal["published", "all"] | list[int] = option(
        "published", "backbone layers that get a side block: published (T5-base: 1,2,3,5,6,7,9,10,11; T5-large: "
                     "odd layers; else all, as the official scripts), all, or a list of 0-based indices")
    init: Literal["fisher", "magnitude", "random"] = option(
        "fisher", "side blocks start as the backbone's blocks structurally pruned to width 1/r, rows kept by "
                  "Fisher importance (LST paper, official fisher-v2) or |W| (official t5-base-v2); random: fresh blocks")
    fisher_samples: int = option(1024, "init=fisher: training examples of the empirical Fisher (official 1024)", low=1)
    gate_temperature: float = option(0.1, "T in the gates g_i = sigmoid(alpha_i / T) (official 0.1)", low=0, low_open=True)
    gate_init: float = option(0.0, "alpha_i at start (official 0: g_i = 0.5)")
    dropout: float = option(0.1, "dropout inside the side blocks and on the side's output (T5's own rate: 0.1)",
                            low=0, high=1, high_open=True)


@register("lst")
class Lst(SideMethod):
    """Ladder side-tuning: side blocks of the backbone's type at width d/r, fed through gates from
    the frozen layers; the head reads the side network's up-projected output alone."""

    name = "lst"
    Options = LstOptions
    side_file = "lst_side.safetensors"

    def build_side(self, backbone, arch, dims):
        o = self.opts
        self.family = family_for(backbone, int(o.reduction), float(o.dropout))
        side = LstSide(self.family, dims, arch == "seq2seq", o)
        self.side_dims = {"side_width": side.width, "side_heads": side.heads, "side_layers": side.layers}
        self.init_report = {"init": o.init}
        if o.init == "magnitude":
            self._init_from_backbone(side, backbone, importance=None)
        return side

    def wrap(self, bundle, ctx):
        self._per_example = bundle.per_example_loss_fn
        return super().wrap(bundle, ctx)

    def _init_from_backbone(self, side, backbone, importance) -> None:
        state = {k: v.detach() for k, v in backbone.state_dict().items()}
        steps = self.family.chain()
        if importance is None:  # magnitude: the weights are their own importance
            importance = state
        pruned = prune_chain(steps, state, importance, self.family.dims)
        with torch.no_grad():
            n = side.load_pruned(self.family, pruned, state)
        self.init_report["tensors_from_backbone"] = n

    def state_dict(self) -> dict:
        return {"init_report": dict(self.init_report)}

    def prepare(self, module, ctx, resumed: dict | None = None):
        super().prepare(module, ctx)
        if resumed is not None:  # its side weights came from the checkpoint, loaded before prepare
            self.init_report = dict(resumed.get("init_report", self.init_report))
            return
        if self.opts.init != "fisher":
            return
        if ctx is None or getattr(ctx, "train_features", None) is None:
            raise ConfigError("method.init", "init=fisher needs the training data (use magnitude or random without it)")
        if self._per_example is None:
            raise ConfigError("method.init", "init=fisher needs per-example losses from the model bundle")
        from ..masked.fisher import fisher_diagonal

        backbone = self.model.backbone
        n_train = len(ctx.train_features)
        n = min(int(self.opts.fisher_samples), n_train)
        if n < int(self.opts.fisher_samples):
            log.warning("lst: method.fisher_samples=%d exceeds the %d training examples; using all of them", self.opts.fisher_samples, n_train)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(int(ctx.seed)))[:n].tolist()
        examples = [ctx.train_features[i] for i in order]
        params = dict(backbone.named_parameters())
        names = sorted({nm for step in self.family.chain() for nm in ([step[1]] if step[0] == "embed" else step[1])})
        missing = [nm for nm in names if nm not in params]
        if missing:
            raise RuntimeError(f"lst: the pruning chain names tensors that are not parameters of the backbone: {missing[:4]}")
        started = time.perf_counter()
        with ctx.phase("mask") if getattr(ctx, "phase", None) is not None else contextlib.nullcontext():
            result = fisher_diagonal(backbone, examples, ctx.collate, lambda b: self._per_example(backbone, b),
                                     kind="empirical", batch_size=16, seed=int(ctx.seed), device=ctx.device, names=names,
                                     sample_ids=order)
        importance = dict(result.scores)
        self._init_from_backbone(self.model.side, backbone, importance)
        self.init_report.update(fisher_samples=n, fisher_seconds=round(time.perf_counter() - started, 3), fisher_impl=result.impl)
        log.info("lst: side network initialised from the backbone pruned by Fisher importance (%d examples, %.1fs)",
                 n, time.perf_counter() - started)

    def report(self) -> dict:
        gates = {}
        for name in ("encoder", "decoder"):
            ladder = getattr(self.model.side, name, None)
            if ladder is not None:
                gates[name] = [round(float(v), 4) for v in ladder.gates().detach()]
        return {"reduction": self.opts.reduction, **self.side_dims, **self.init_report, "gates": gates, **self.base_report()}
