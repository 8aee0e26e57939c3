"""LST's side network (lst.py is the method): the backbone's own block types at side width
(`Family`: one per architecture, T5 / BERT-like / OPT), the structural pruning that gives the
side blocks their initial weights (`prune_chain`), and the modules (`Ladder`: one gated ladder
over a stack of backbone blocks; `LstSide`: the ladders and the up-projection). `opts` is the
method's LstOptions (reduction, side_layers, gate_init, gate_temperature, dropout).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...core.errors import ConfigError

# the official scripts' side layers for T5 (seq2seq/scripts/ladder_side_tuning_{base,large}.sh)
PUBLISHED_T5_LAYERS = {12: [1, 2, 3, 5, 6, 7, 9, 10, 11], 24: list(range(1, 24, 2))}


def _heads(width: int, wanted: int) -> int:
    """The most attention heads ≤ the backbone's that divide the side width."""
    for h in range(min(wanted, width), 0, -1):
        if width % h == 0:
            return h
    return 1


def resolve_side_layers(opt, n_layers: int, arch: str) -> list[int]:
    if opt == "all" or (opt == "published" and not (arch == "seq2seq" and n_layers in PUBLISHED_T5_LAYERS)):
        return list(range(n_layers))
    if opt == "published":
        return list(PUBLISHED_T5_LAYERS[n_layers])
    try:
        layers = sorted({int(i) for i in opt})
    except (TypeError, ValueError):
        raise ConfigError("method.side_layers", f"expected published, all or a list of layer indices, got {opt!r}") from None
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise ConfigError("method.side_layers", f"{list(opt)} must be non-empty indices in 0..{n_layers - 1}")
    return layers


# --- the backbone's block types at side width --------------------------------------------------


class Family:
    """What LST needs of one backbone architecture: its blocks, a config at side width, the side
    block's call and the structural-pruning chain over the backbone's parameter names."""

    final_norm_key: str | None = None

    def __init__(self, module: nn.Module, r: int, dropout: float):
        self.module, self.r, self.dropout = module, r, dropout
        self.cfg = module.config

    def eager(self, cfg):
        cfg = copy.deepcopy(cfg)
        cfg._attn_implementation = "eager"  # additive float masks, as built below
        return cfg

    @staticmethod
    def pad_mask(mask: torch.Tensor, dtype) -> torch.Tensor:
        """(B, T) 1 = token → additive (B, 1, 1, T)."""
        return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min

    @staticmethod
    def causal(t: int, device, dtype) -> torch.Tensor:
        return torch.triu(torch.full((t, t), torch.finfo(dtype).min, device=device, dtype=dtype), diagonal=1)[None, None]


class T5Family(Family):
    def __init__(self, module, r, dropout):
        super().__init__(module, r, dropout)
        c = self.cfg
        if c.d_model // r < 1 or c.d_kv // r < 1 or c.d_ff // r < 1:
            raise ConfigError("method.reduction", f"{r} leaves no width: d_model {c.d_model}, d_kv {c.d_kv}, d_ff {c.d_ff}")
        side = self.eager(c)
        side.d_model, side.d_ff, side.d_kv = c.d_model // r, c.d_ff // r, c.d_kv // r
        side.dropout_rate = dropout
        side.use_cache = False
        self.side_cfg = side
        self.width = side.d_model
        self.dims = {"model": side.d_model, "inner": side.d_kv * side.num_heads, "ff": side.d_ff}
        self.heads = side.num_heads

    def make_block(self, stack: str, i: int, first: bool) -> nn.Module:
        from transformers.models.t5.modeling_t5 import T5Block

        cfg = copy.deepcopy(self.side_cfg)
        cfg.is_decoder = stack == "decoder"
        return T5Block(cfg, has_relative_attention_bias=first, layer_idx=i)

    def make_norm(self, stack: str) -> nn.Module:
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        return T5LayerNorm(self.width, eps=self.cfg.layer_norm_epsilon)

    def chain(self) -> list[tuple]:
        c = self.cfg
        gated = "gated" in str(getattr(c, "feed_forward_proj", "relu"))
        wi = ["wi_0", "wi_1"] if gated else ["wi"]
        steps = [("embed", "shared.weight")]
        for stack, n in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
            for i in range(n):
                b = f"{stack}.block.{i}.layer"
                steps += [("norm", [f"{b}.0.layer_norm.weight"]),
                          ("linear", [f"{b}.0.SelfAttention.{x}.weight" for x in "qkv"], [], "inner"),
                          ("linear", [f"{b}.0.SelfAttention.o.weight"], [], "model")]
                ff = 1
                if stack == "decoder":
                    steps += [("norm", [f"{b}.1.layer_norm.weight"]),
                              ("linear", [f"{b}.1.EncDecAttention.{x}.weight" for x in "qkv"], [], "inner"),
                              ("linear", [f"{b}.1.EncDecAttention.o.weight"], [], "model")]
                    ff = 2
                steps += [("norm", [f"{b}.{ff}.layer_norm.weight"]),
                          ("linear", [f"{b}.{ff}.DenseReluDense.{w}.weight" for w in wi], [], "ff"),
                          ("linear", [f"{b}.{ff}.DenseReluDense.wo.weight"], [], "model")]
            steps.append(("norm", [f"{stack}.final_layer_norm.weight"]))
        return steps

    def block_prefix(self, stack: str, i: int) -> str:
        return f"{stack}.block.{i}."

    def norm_keys(self, stack: str) -> dict:
        return {"weight": f"{stack}.final_layer_norm.weight"}

    def copied(self, stack: str, first: bool) -> dict:
        """Side-block keys taken unpruned from the backbone: the relative position bias."""
        if not first:
            return {}
        key = "layer.0.SelfAttention.relative_attention_bias.weight"
        return {key: f"{stack}.block.0.{key}"}

    def run_block(self, block, h, state, mask, memory=None, memory_mask=None):
        """One side block; `state` carries T5's shared position biases between blocks."""
        pb, cpb = state.get("pb"), state.get("cpb")
        h, pb, cpb = block(h, attention_mask=mask, position_bias=pb, encoder_hidden_states=memory,
                           encoder_attention_mask=memory_mask, encoder_decoder_position_bias=cpb)
        state["pb"], state["cpb"] = pb, cpb
        return h


class LayerFamily(Family):
    """Backbones whose side config is their own at hidden_size / r, with the most heads ≤ theirs
    that divide it (BERT-like and OPT): blocks of the type of `layers[0]`, no shared state."""

    ff_key = ff_label = ""  # the config's feed-forward width, and how its error names it
    dropout_keys: tuple[str, ...] = ()  # the config's dropout rates, all set to method.dropout

    def __init__(self, module, r, dropout):
        super().__init__(module, r, dropout)
        c = self.cfg
        width, ff = c.hidden_size // r, getattr(c, self.ff_key) // r
        if width < 1 or ff < 1:
            raise ConfigError("method.reduction", f"{r} leaves no width: hidden {c.hidden_size}, {self.ff_label} {getattr(c, self.ff_key)}")
        side = self.eager(c)
        side.hidden_size = width
        setattr(side, self.ff_key, ff)
        side.num_attention_heads = _heads(width, c.num_attention_heads)
        for key in self.dropout_keys:
            setattr(side, key, dropout)
        self.side_cfg, self.width, self.heads = side, width, side.num_attention_heads
        self.dims = {"model": width, "inner": width, "ff": ff}

    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def make_block(self, stack, i, first):
        return type(self.layers()[0])(copy.deepcopy(self.side_cfg), layer_idx=i)

    def copied(self, stack, first):
        return {}

    def run_block(self, block, h, state, mask, memory=None, memory_mask=None):
        out = block(h, attention_mask=mask)
        return out[0] if isinstance(out, tuple) else out


class BertFamily(LayerFamily):
    """BERT / MiniLM / RoBERTa: post-LN layers, no final norm."""

    ff_key, ff_label = "intermediate_size", "intermediate"
    dropout_keys = ("hidden_dropout_prob", "attention_probs_dropout_prob")

    def __init__(self, module, r, dropout):
        super().__init__(module, r, dropout)
        self.prefix = module.base_model_prefix + "."
        self.body = getattr(module, module.base_model_prefix)

    def layers(self):
        return self.body.encoder.layer

    def make_norm(self, stack):
        return nn.Identity()

    def chain(self):
        p = self.prefix
        steps = [("embed", f"{p}embeddings.word_embeddings.weight"),
                 ("norm", [f"{p}embeddings.LayerNorm.weight", f"{p}embeddings.LayerNorm.bias"])]
        for i in range(self.cfg.num_hidden_layers):
            b = f"{p}encoder.layer.{i}"
            steps += [("linear", [f"{b}.attention.self.{x}.weight" for x in ("query", "key", "value")],
                       [f"{b}.attention.self.{x}.bias" for x in ("query", "key", "value")], "inner"),
                      ("linear", [f"{b}.attention.output.dense.weight"], [f"{b}.attention.output.dense.bias"], "model"),
                      ("norm", [f"{b}.attention.output.LayerNorm.weight", f"{b}.attention.output.LayerNorm.bias"]),
                      ("linear", [f"{b}.intermediate.dense.weight"], [f"{b}.intermediate.dense.bias"], "ff"),
                      ("linear", [f"{b}.output.dense.weight"], [f"{b}.output.dense.bias"], "model"),
                      ("norm", [f"{b}.output.LayerNorm.weight", f"{b}.output.LayerNorm.bias"])]
        return steps

    def block_prefix(self, stack, i):
        return f"{self.prefix}encoder.layer.{i}."

    def norm_keys(self, stack):
        return {}


class OptFamily(LayerFamily):
    """OPT: decoder layers (pre-LN, or post-LN for OPT-350m), causal self-attention."""

    ff_key, ff_label = "ffn_dim", "ffn"
    dropout_keys = ("dropout", "attention_dropout")

    def __init__(self, module, r, dropout):
        super().__init__(module, r, dropout)
        self.decoder = module.model.decoder
        self.has_final = self.decoder.final_layer_norm is not None

    def layers(self):
        return self.decoder.layers

    def make_norm(self, stack):
        return nn.LayerNorm(self.width) if self.has_final else nn.Identity()

    def chain(self):
        d = "model.decoder"
        steps = [("embed", f"{d}.embed_tokens.weight")]
        if self.decoder.project_in is not None:
            steps.append(("linear", [f"{d}.project_in.weight"], [], "model"))
        bias = bool(getattr(self.cfg, "enable_bias", True))
        for i in range(self.cfg.num_hidden_layers):
            b = f"{d}.layers.{i}"

            def lin(names, kind):
                return ("linear", [f"{b}.{n}.weight" for n in names], [f"{b}.{n}.bias" for n in names] if bias else [], kind)

            steps += [("norm", [f"{b}.self_attn_layer_norm.weight", f"{b}.self_attn_layer_norm.bias"]),
                      lin(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], "inner"),
                      lin(["self_attn.out_proj"], "model"),
                      ("norm", [f"{b}.final_layer_norm.weight", f"{b}.final_layer_norm.bias"]),
                      lin(["fc1"], "ff"), lin(["fc2"], "model")]
        if self.has_final:
            steps.append(("norm", [f"{d}.final_layer_norm.weight", f"{d}.final_layer_norm.bias"]))
        return steps

    def block_prefix(self, stack, i):
        return f"model.decoder.layers.{i}."

    def norm_keys(self, stack):
        return {"weight": "model.decoder.final_layer_norm.weight", "bias": "model.decoder.final_layer_norm.bias"} if self.has_final else {}


FAMILIES = {"t5": T5Family, "bert": BertFamily, "roberta": BertFamily, "xlm-roberta": BertFamily, "opt": OptFamily}


def family_for(module: nn.Module, r: int, dropout: float) -> Family:
    model_type = getattr(module.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError("model", f"method=lst builds side blocks of the backbone's own type for {', '.join(sorted(FAMILIES))} "
                                   f"models; {type(module).__name__} (model_type {model_type!r}) is not supported")
    return FAMILIES[model_type](module, r, dropout)


# --- structural pruning (the side network's initial weights) -------------------------------------


def _keep_rows(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` rows with the largest L1 norm of `score`."""
    l1 = score.reshape(score.shape[0], -1).abs().sum(1)
    return torch.sort(torch.argsort(l1, descending=True, stable=True)[:keep]).values


def prune_chain(steps: list[tuple], weights: dict, importance: dict, dims: dict) -> dict[str, torch.Tensor]:
    """The pruned tensors of every step's parameters (see the module docstring): `weights` and
    `importance` map parameter names to tensors of the same shape, `dims` the side widths
    ('model', 'inner', 'ff') the kept output rows of each linear map must have."""
    out, prev = {}, None
    for step in steps:
        kind = step[0]
        if kind == "embed":
            imp = importance[step[1]].float()  # (vocab, d)
            prev = _keep_rows(imp.t(), dims["model"])
        elif kind == "norm":
            for name in step[1]:
                out[name] = weights[name][prev]
        else:
            names, biases, dim = step[1], step[2], step[3]
            imps = [importance[n].float()[:, prev] for n in names]
            prod = imps[0]
            for extra in imps[1:]:
                prod = prod * extra
            rows = _keep_rows(prod, dims[dim])
            for n in names:
                out[n] = weights[n][:, prev][rows]
            for n in biases:
                out[n] = weights[n][rows]
            prev = rows
    return out


# --- the side network ------------------------------------------------------------------------------


class Ladder(nn.Module):
    """One ladder over a stack of N backbone blocks: down_0, and per side layer a down-projection,
    a gate and a side block; then the final norm."""

    def __init__(self, family: Family, stack: str, d: int, layers: list[int], opts):
        super().__init__()
        w = family.width
        self.layers = list(layers)
        self.first_down = nn.Linear(d, w)
        self.down = nn.ModuleDict({str(i): nn.Linear(d, w) for i in layers})
        self.blocks = nn.ModuleDict({str(i): family.make_block(stack, i, first=(i == layers[0])) for i in layers})
        self.alpha = nn.Parameter(torch.full((len(layers),), float(opts.gate_init)))
        self.norm = family.make_norm(stack)
        self.dropout = nn.Dropout(opts.dropout)
        self.temperature = float(opts.gate_temperature)
        self.family, self.stack = family, stack

    def gates(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha / self.temperature)

    def forward(self, states, mask, memory=None, memory_mask=None):
        """states: ϕ_0..ϕ_N (each (B, T, d)); mask: the blocks' additive self-attention mask → (B, T, d_s)."""
        dtype = self.first_down.weight.dtype
        h = self.first_down(states[0].to(dtype))
        g = self.gates()
        state: dict = {}
        for k, i in enumerate(self.layers):
            h = g[k] * h + (1 - g[k]) * self.down[str(i)](states[i + 1].to(dtype))
            h = self.family.run_block(self.blocks[str(i)], h, state, mask, memory, memory_mask)
        return self.dropout(self.norm(h))


class LstSide(nn.Module):
    per_token = False  # the side blocks attend across positions
    needs_cross_attentions = False
    raw_layers = True  # ϕ_{i+1} = block i's own output (not the final-normed last hidden state)
    side_only = True  # the head reads up(side) alone

    def __init__(self, family: Family, dims: dict, seq2seq: bool, opts):
        super().__init__()
        d = dims["d_model"]
        self.seq2seq = seq2seq
        self.layers = {}
        if seq2seq:
            for stack, n in (("encoder", dims["enc_layers"]), ("decoder", dims["dec_layers"])):
                self.layers[stack] = resolve_side_layers(opts.side_layers, n, "seq2seq")
            self.encoder = Ladder(family, "encoder", d, self.layers["encoder"], opts)
            self.decoder = Ladder(family, "decoder", d, self.layers["decoder"], opts)
        else:
            self.layers["encoder"] = resolve_side_layers(opts.side_layers, dims["layers"], "classifier")
            self.encoder = Ladder(family, "encoder", d, self.layers["encoder"], opts)
        self.up = nn.Linear(family.width, dims.get("d_out", d))
        self.width, self.heads = family.width, family.heads
        self.causal_self = isinstance(family, OptFamily)

    def _self_mask(self, mask, dtype, causal: bool):
        m = Family.pad_mask(mask, dtype)
        if causal:  # clamped: a left-padded row's first positions see only padding (uniform, not NaN)
            m = (m + Family.causal(mask.shape[1], mask.device, dtype)).clamp(min=torch.finfo(dtype).min)
        return m

    def classify(self, layers, mask, positions):
        dtype = self.up.weight.dtype
        h = self.encoder(layers, self._self_mask(mask, dtype, self.causal_self))
        rows = torch.arange(positions.shape[0], device=positions.device)
        return self.up(h[rows, positions])

    def encode(self, layers, mask):
        return self.encoder(layers, self._self_mask(mask, self.up.weight.dtype, False))

    def decode(self, layers, cross, memory, mask):
        dtype = self.up.weight.dtype
        n = layers[0].shape[1]
        causal = Family.causal(n, memory.device, dtype)
        return self.up(self.decoder(layers, causal, memory=memory, memory_mask=Family.pad_mask(mask, dtype)))

    def load_pruned(self, family: Family, pruned: dict, backbone_state: dict) -> int:
        """Copy the pruned backbone blocks (and final norms) into the side blocks; returns how
        many tensors were set. Every tensor of every side block must be covered."""
        count = 0
        ladders = {"encoder": self.encoder, **({"decoder": self.decoder} if self.seq2seq else {})}
        for stack, ladder in ladders.items():
            for i in ladder.layers:
                block = ladder.blocks[str(i)]
                prefix = family.block_prefix(stack, i)
                first = i == ladder.layers[0]
                copied = family.copied(stack, first)
                state = {}
                for key in block.state_dict():
                    src = copied.get(key)
                    state[key] = backbone_state[src] if src is not None else pruned[prefix + key]
                block.load_state_dict(state, strict=True)
                count += len(state)
            for key, src in family.norm_keys(stack).items():
                getattr(ladder.norm, key).data.copy_(pruned[src])
                count += 1
        return count
