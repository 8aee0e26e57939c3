"""READ — REcurrent ADaptation (Wang et al. 2023; ../shared/METHODS.md §4).

The backbone is frozen and runs once per batch without autograd (see side.py); a small RNN runs
over its *depth*, one step per layer, with the same weights at every layer, per token:

  encoder        h^E_0 = 0,  h^E_i = N_E(ϕ^E_i, h^E_{i−1}),  i = 1..N_E
  decoder (T5)   ψ_j = σ_{D,j} · Ψ(h^E_{N_E})    (σ: layer j's cross-attention weights, averaged
                                                 over heads; per head with method.per_head=true)
                 x_j = ϕ^D_j + ψ_j,  h^D_0 = 0,  h^D_j = N_D(x_j, h^D_{j−1})
  output         ϕ'_D = ϕ^D_{N_D} + up(h^D_{N_D})  → the frozen LM head

as in the paper (Algorithm 1) and the authors' code: the RNN cells read the backbone's state
directly (input size d_model, hidden size `method.hidden`) and Ψ maps h^E to d_model.
`method.project_inputs=true` puts a shared learned d_model → hidden projection (down_E, down_D)
before the cells instead, Ψ then working at the hidden size: the former default of this project,
2–3.5× fewer trainable parameters than published (T5-base, LSTM, hidden 128: 576,512 = 0.26% vs
1,116,928 = 0.50% of the model).

Encoder-only (BERT, MiniLM, RoBERTa) and decoder-only (OPT) classifiers use the encoder
recurrence over their layers and add up(h_N) to the last hidden state of the token the new
(trainable) head reads ([CLS] / <s> / the last non-pad token): the side network is per token, so
computing it only where the head reads gives the same logits.

Project decisions (METHODS.md §4): the RNN's last state is mapped back to d_model by a learned
up-projection that starts at zero, so the untrained model is the backbone; each layer's state is
layer-normalised without parameters before it enters the side network (`method.norm_inputs`;
T5's and OPT's residual streams are not normalised between layers). The backbone runs in the
trainer's mode (dropout on while training, as for every other method). The trainable parameters
(side network + head) do not depend on the backbone's depth: `method_report.side_params`,
`params.added`.

What the run's files hold: `checkpoints/final/model.safetensors` is the base model's layout
(backbone unchanged + the trained classification head; for T5 exactly the pretrained weights) and
`read_side.safetensors` the side network's tensors. The run's final evaluation uses the backbone
*with* the side network; `job=evaluate` on the exported checkpoint loads the plain model and so
scores the backbone and head alone, without READ's correction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.options import MethodOptions, option
from ..registry import register
from .side import SideMethod

RNNS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass
class ReadOptions(MethodOptions):
    rnn: str = option("lstm", "recurrent cell N_E / N_D over the layers: rnn (tanh) | lstm | gru (paper grid: all three)", choices=tuple(RNNS))
    hidden: int = option(128, "RNN hidden size (paper grid: 128, 256); the cells read d_model-wide states, a learned up-projection maps h back", low=1)
    per_head: bool = option(False, "T5 decoder: one Ψ per cross-attention head, ψ_j = Σ_heads σ_{j,h}·Ψ_h(h^E); false = heads' weights averaged, one Ψ")
    norm_inputs: bool = option(True, "layer-normalise (no parameters) each layer's hidden state before it enters the side network")
    project_inputs: bool = option(False, "a shared learned d_model → hidden projection before the RNN (and Ψ at the hidden size); "
                                         "false = the paper's and the authors' code: the RNN reads ϕ_i directly")


class Recurrence(nn.Module):
    """One RNN run over the layers (sequence axis = depth, batch = tokens), reading the layers'
    states directly (input size d_model) or, with `project`, through a learned d → hidden map."""

    def __init__(self, d_in: int, hidden: int, rnn: str, norm: bool, project: bool = False):
        super().__init__()
        self.down = nn.Linear(d_in, hidden) if project else None
        self.rnn = RNNS[rnn](hidden if project else d_in, hidden)
        self.norm = norm

    @property
    def width(self) -> int:
        """Width of the RNN's input: d_model, or the hidden size with the projection."""
        return self.rnn.input_size

    def project(self, layers: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(layers)  # (N, *tokens, d)
        if self.norm:
            x = F.layer_norm(x, x.shape[-1:])
        x = x.to(self.rnn.weight_ih_l0.dtype)
        return self.down(x) if self.down is not None else x

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, *tokens, H) → the last state h_N, (*tokens, H); h_0 = 0."""
        shape = x.shape
        out, _ = self.rnn(x.reshape(shape[0], -1, shape[-1]))
        return out[-1].reshape(*shape[1:-1], out.shape[-1])


class ReadSide(nn.Module):
    per_token = True  # a position's correction depends on that position's states only

    def __init__(self, dims: dict, seq2seq: bool, opts: ReadOptions):
        super().__init__()
        d, hidden = dims["d_model"], opts.hidden
        self.encoder = Recurrence(d, hidden, opts.rnn, opts.norm_inputs, opts.project_inputs)
        self.seq2seq = seq2seq
        self.needs_cross_attentions = seq2seq
        self.per_head = opts.per_head
        self.heads = dims["heads"]
        if seq2seq:
            self.decoder = Recurrence(d, hidden, opts.rnn, opts.norm_inputs, opts.project_inputs)
            # Ψ: h^E (hidden) → the width the decoder's RNN reads (d_model, or hidden when projected)
            self.psi = nn.Linear(hidden, self.decoder.width * (self.heads if opts.per_head else 1), bias=False)
        self.up = nn.Linear(hidden, dims.get("d_out", d))
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    # encoder-only / decoder-only classifiers
    def classify(self, layers, mask, positions):
        rows = torch.arange(positions.shape[0], device=positions.device)
        picked = [h[rows, positions] for h in layers[1:]]  # (B, d) per layer 1..N: only where the head reads
        return self.up(self.encoder.run(self.encoder.project(picked)))

    # T5
    def encode(self, layers, mask):
        return self.encoder.run(self.encoder.project(layers[1:]))  # h^E_{N_E}: (B, m, H)

    def decode(self, layers, cross, memory, mask):
        psi = self.psi(memory)  # (B, m, H) or (B, m, heads·H)
        x = self.decoder.project(layers[1:])  # (N_D, B, n, W), W = d_model (or hidden, projected)
        psis = []
        for sigma in cross:  # (B, heads, n, m)
            sigma = sigma.to(psi.dtype)
            if self.per_head:
                b, m = psi.shape[:2]
                psis.append(torch.einsum("bhnm,bmhk->bnk", sigma, psi.view(b, m, self.heads, -1)))
            else:
                psis.append(sigma.mean(1) @ psi)
        h = self.decoder.run(x + torch.stack(psis))
        return self.up(h)


@register("read")
class Read(SideMethod):
    """READ: a small RNN over the layers of a frozen backbone run once without autograd."""

    name = "read"
    Options = ReadOptions
    side_file = "read_side.safetensors"

    def build_side(self, backbone, arch, dims):
        return ReadSide(dims, arch == "seq2seq", self.opts)

    def report(self) -> dict:
        return {"rnn": self.opts.rnn, "hidden": self.opts.hidden, "per_head": self.opts.per_head,
                "project_inputs": self.opts.project_inputs, **self.base_report()}
