"""LST — Ladder Side-Tuning (Sung et al. 2022), a READ-paper baseline.

A side network of reduced width d_s = d_model / r (`method.reduction`, default 8) runs beside the
frozen backbone, which runs once per batch without autograd (see side.py). Every backbone layer
i feeds the side network through its own learned down-projection and a learned gate:

  h^S_0 = down_0(ϕ_0)
  x_i   = μ_i · down_i(ϕ_i) + (1 − μ_i) · h^S_{i−1},   μ_i = sigmoid(α_i / T)   (α_i = 0 at start, T = 0.1)
  h^S_i = f_i(x_i)          f_i: a pre-norm transformer layer of width d_s (feed-forward d_ff / r)

For T5 the side encoder does this over the encoder's layers and a side decoder over the decoder's
layers, its blocks with causal self-attention and cross-attention to the side encoder's output.
The side network's last state, up-projected (zero-initialised), is added to the backbone's last
hidden state before the head (the frozen LM head for T5, the new trainable classifier otherwise).
Unlike READ there is one side block, one projection and one gate per backbone layer, so the
trainable parameters grow with depth. Simplification: the side blocks start from a random
initialisation, not from the pruned backbone weights the LST paper distils them from.

`export` returns the base model's layout (backbone unchanged + trained head); the side network is
`lst_side.safetensors` and `params.added`. The final evaluation uses the side network;
`job=evaluate` on the exported checkpoint scores the backbone and head alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...core.options import MethodOptions, option
from ..registry import register
from .side import SideMethod


@dataclass
class LstOptions(MethodOptions):
    reduction: int = option(8, "reduction factor r: the side network's width is d_model / r (and its feed-forward d_ff / r)", low=1)
    gate_temperature: float = option(0.1, "T in the gates μ_i = sigmoid(α_i / T)", low=0, low_open=True)
    dropout: float = option(0.1, "dropout inside the side network's blocks", low=0, high=1, high_open=True)


def _heads(width: int, wanted: int) -> int:
    """The most attention heads ≤ the backbone's that divide the side width."""
    for h in range(min(wanted, width), 0, -1):
        if width % h == 0:
            return h
    return 1


class Ladder(nn.Module):
    """One ladder over a stack of N layers: N+1 down-projections, N gates, N side blocks."""

    def __init__(self, d: int, width: int, ff: int, heads: int, layers: int, dropout: float, temperature: float, decoder: bool):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(d, width) for _ in range(layers + 1))
        self.alpha = nn.Parameter(torch.zeros(layers))
        block = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
        self.blocks = nn.ModuleList(block(width, heads, ff, dropout, batch_first=True, norm_first=True) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.temperature = temperature
        self.decoder = decoder

    def forward(self, states, pad_mask, memory=None, memory_pad_mask=None):
        """states: ϕ_0..ϕ_N, each (B, T, d); pad_mask (B, T) True at padding → (B, T, width)."""
        dtype = self.down[0].weight.dtype
        h = self.down[0](states[0].to(dtype))
        mu = torch.sigmoid(self.alpha / self.temperature)
        causal = None
        if self.decoder:
            t = h.shape[1]
            causal = torch.triu(torch.full((t, t), float("-inf"), device=h.device), diagonal=1)
        for i, block in enumerate(self.blocks):
            x = mu[i] * self.down[i + 1](states[i + 1].to(dtype)) + (1 - mu[i]) * h
            if self.decoder:
                h = block(x, memory, tgt_mask=causal, tgt_key_padding_mask=pad_mask, memory_key_padding_mask=memory_pad_mask)
            else:
                h = block(x, src_key_padding_mask=pad_mask)
        return self.norm(h)


class LstSide(nn.Module):
    per_token = False  # the side blocks attend across positions
    needs_cross_attentions = False

    def __init__(self, dims: dict, ff: int, seq2seq: bool, opts: LstOptions):
        super().__init__()
        d = dims["d_model"]
        width = max(1, d // opts.reduction)
        ffw = max(1, ff // opts.reduction)
        heads = _heads(width, dims["heads"])
        args = dict(d=d, width=width, ff=ffw, heads=heads, dropout=opts.dropout, temperature=opts.gate_temperature)
        self.seq2seq = seq2seq
        if seq2seq:
            self.encoder = Ladder(layers=dims["enc_layers"], decoder=False, **args)
            self.decoder = Ladder(layers=dims["dec_layers"], decoder=True, **args)
        else:
            self.encoder = Ladder(layers=dims["layers"], decoder=False, **args)
        self.up = nn.Linear(width, dims.get("d_out", d))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.width, self.heads = width, heads

    def classify(self, layers, mask, positions):
        h = self.encoder(layers, mask == 0)
        rows = torch.arange(positions.shape[0], device=positions.device)
        return self.up(h[rows, positions])

    def encode(self, layers, mask):
        return self.encoder(layers, mask == 0)

    def decode(self, layers, cross, memory, mask):
        return self.up(self.decoder(layers, None, memory=memory, memory_pad_mask=mask == 0))


@register("lst")
class Lst(SideMethod):
    """Ladder side-tuning: a d/r-wide side transformer fed through gates from every frozen layer."""

    name = "lst"
    Options = LstOptions
    side_file = "lst_side.safetensors"

    def build_side(self, backbone, arch, dims):
        cfg = backbone.config
        ff = getattr(cfg, "d_ff", None) or getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * dims["d_model"]
        side = LstSide(dims, int(ff), arch == "seq2seq", self.opts)
        self.side_dims = {"side_width": side.width, "side_heads": side.heads}
        return side

    def report(self) -> dict:
        gates = {}
        for name in ("encoder", "decoder"):
            ladder = getattr(self.model.side, name, None)
            if ladder is not None:
                gates[name] = [round(float(v), 4) for v in torch.sigmoid(ladder.alpha.detach() / ladder.temperature)]
        return {"reduction": self.opts.reduction, **self.side_dims, "gates": gates, **self.base_report()}

