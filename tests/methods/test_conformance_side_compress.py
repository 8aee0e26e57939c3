"""Conformance of READ, LST, ERE, BITQ and LRA with their papers (issue 20).

Each test computes a small reference from the published equations *here*, from the method's
parameters and the frozen backbone's own outputs, without calling the project's code for the
method's maths, and compares the method's output with it:

- READ (papers/read.txt, Algorithm 1): h_0 = 0, h_i = N(ϕ_i, h_{i−1}) with the cell's equations
  written out (LSTM, GRU); the T5 decoder's ψ_j = σ_j Ψ h^E, x_j = ϕ_j + ψ_j; the output
  ϕ_N + up(h_N); and the zero-initialised up-map making the untrained model the backbone.
- LST (Sung et al. 2022; ylsung/Ladder-Side-Tuning): the ladder h = g·h + (1−g)·down(ϕ), the
  side blocks, and the head reading up(side) alone; the side blocks carry position information;
  the published side layers and trainable count on T5-base; the side blocks' structural-pruning
  initialisation (|W| and Fisher importance).
- ERE / BITQ / LRA (papers/ere.txt, METHODS.md §5): reconstruction of known low-rank residuals.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose
from sparse_ft.jobs.context import seed_everything
from sparse_ft.methods import build_method
from sparse_ft.models import build_model
from sparse_ft.tasks import load_task

TINY = ["task=synthetic_nli", "task.max_train_samples=24", "task.max_eval_samples=8", "trainer.batch_size=8"]


def build(model: str, method: str, *overrides: str):
    """(method, wrapped bundle, one batch, the raw bundle's pieces) as the train job builds them."""
    cfg = compose([f"model={model}", *TINY, f"method={method}", *overrides])
    seed_everything(0)
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task, max_length=32)
    feats = bundle.encode(task, "train")
    m = build_method(cfg.method)
    w = m.wrap(bundle, None)
    return m, w, bundle.collate([feats[i] for i in range(6)]), feats, bundle


def randomize(module: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> None:
    """Non-zero values everywhere (zero-initialised maps would hide a wrong formula)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# --- the RNN cells, from their equations ----------------------------------------------------------


def lstm_cell(x, h, c, rnn):
    """i, f, g, o = σ, σ, tanh, σ of W_i x + b_i + W_h h + b_h (PyTorch's gate order i, f, g, o)."""
    z = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
    i, f, g, o = z.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(x, h, rnn):
    """r, z = σ(W_i x + b_i + W_h h + b_h); n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)); h' = (1−z) n + z h."""
    gi = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
    gh = h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
    ir, iz, inn = gi.chunk(3, -1)
    hr, hz, hn = gh.chunk(3, -1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(inn + r * hn)
    return (1 - z) * n + z * h


def recurrence(states, rnn, kind: str):
    """h_0 = 0, h_i = N(x_i, h_{i−1}) over the layers; returns h_N."""
    h = states[0].new_zeros(*states[0].shape[:-1], rnn.hidden_size)
    c = h.clone()
    for x in states:
        if kind == "lstm":
            h, c = lstm_cell(x, h, c, rnn)
        else:
            h = gru_cell(x, h, rnn)
    return h


def norm(x):
    return F.layer_norm(x, x.shape[-1:])


# --- READ ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_inputs", [False, True])
def test_read_encoder_recurrence_reads_each_layer_state_directly(norm_inputs):
    """Encoder-only classifier, LSTM: logits = head(ϕ_N + up(h_N)) at [CLS], h_i = LSTM(ϕ_i, h_{i−1})
    with the cell's input size d_model (no projection before it, as in the paper)."""
    m, w, batch, _, _ = build("tiny_bert", "read", "method.rnn=lstm", "method.hidden=8", f"method.norm_inputs={str(norm_inputs).lower()}")
    side, backbone = m.model.side, m.model.backbone
    assert side.encoder.rnn.input_size == backbone.config.hidden_size  # d_model → hidden, as published
    randomize(side)
    w.module.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        ours = w.module(**inputs).logits
        out = backbone.bert(**inputs, output_hidden_states=True)
        phis = [h[:, 0] for h in out.hidden_states[1:]]  # ϕ_1..ϕ_N at [CLS]
        phis = [norm(p) for p in phis] if norm_inputs else phis
        h_n = recurrence(phis, side.encoder.rnn, "lstm")
        vec = out.last_hidden_state[:, 0] + h_n @ side.up.weight.T + side.up.bias
        ref = backbone.classifier(backbone.bert.pooler(vec.unsqueeze(1)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_read_t5_decoder_recurrence_adds_cross_attention_weighted_psi():
    """T5, GRU: h^E = GRU over the encoder's ϕ^E_i; ψ_j = mean_heads(σ_j) · Ψ h^E; x_j = ϕ^D_j + ψ_j;
    h^D = GRU over x_j; logits = lm_head((ϕ^D_N + up(h^D_N)) · d^−½)."""
    m, w, batch, _, _ = build("tiny_t5", "read", "method.rnn=gru", "method.hidden=8", "method.norm_inputs=false")
    side, t5 = m.model.side, m.model.backbone
    randomize(side)
    w.module.eval()
    labels = batch["target_ids"]
    with torch.no_grad():
        ours = w.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        out = t5(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                 output_hidden_states=True, output_attentions=True)
        h_e = recurrence(list(out.encoder_hidden_states[1:]), side.encoder.rnn, "gru")  # (B, m, H)
        psi = h_e @ side.psi.weight.T  # (B, m, d)
        xs = [phi + sigma.mean(1) @ psi for phi, sigma in zip(out.decoder_hidden_states[1:], out.cross_attentions)]
        h_d = recurrence(xs, side.decoder.rnn, "gru")
        final = out.decoder_hidden_states[-1] + h_d @ side.up.weight.T + side.up.bias
        ref = t5.lm_head(final * t5.config.d_model ** -0.5)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_t5"])
def test_read_untrained_is_the_backbone(model):
    """up starts at zero: before training READ's output is the backbone's, whatever the RNN holds."""
    m, w, batch, _, _ = build(model, "read")
    assert torch.count_nonzero(m.model.side.up.weight) == 0 and torch.count_nonzero(m.model.side.up.bias) == 0
    w.module.eval()
    backbone = m.model.backbone
    with torch.no_grad():
        if model == "tiny_t5":
            kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["target_ids"])
            torch.testing.assert_close(w.module(**kw).logits, backbone(**kw).logits, rtol=1e-5, atol=1e-6)
        else:
            kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
            torch.testing.assert_close(w.module(**kw).logits, backbone(**kw).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shapes,total", [("t5_base_shapes", 222_903_552), ("t5_large_shapes", 737_668_096)])
def test_read_trainable_count_on_t5_shapes(shapes, total):
    """READ's size with the RNN reading d_model-wide states (LSTM, hidden 128): two LSTMs
    4(d·h + h·h + 2h), Ψ (h → d) and up (h → d, bias); T5-base 0.50% of the model (the paper:
    ~0.5–0.9%), T5-large 0.20%. Built on the meta device from conf/model/<shapes>.yaml."""
    from transformers import T5Config, T5ForConditionalGeneration

    from sparse_ft.methods.petl.read import Read
    from sparse_ft.methods.petl.side import model_dims

    conf = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / f"{shapes}.yaml").config
    cfg = T5Config(**{k: v for k, v in OmegaConf.to_container(conf).items() if k != "model_type"})
    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(cfg)
        method = build_method(OmegaConf.create({"name": "read"}))
        side = Read.build_side(method, t5, "seq2seq", model_dims(t5))
    assert sum(p.numel() for p in t5.parameters()) == total
    d, h = cfg.d_model, 128
    expected = 2 * 4 * (d * h + h * h + 2 * h) + h * d + (h * d + d)
    assert sum(p.numel() for p in side.parameters()) == expected
    if shapes == "t5_base_shapes":
        assert 0.5 <= 100 * expected / total <= 0.9


@pytest.mark.parametrize("method", ["read", "lst"])
def test_side_methods_train_the_backbone_with_its_dropout_on(method):
    """As every other method: the backbone runs in the trainer's mode (dropout while training, off
    in eval); until issue 20 READ and LST held it in eval mode."""
    m, w, batch, _, _ = build("tiny_t5", method, *(["method.init=random", "method.dropout=0.0"] if method == "lst" else []))
    backbone = m.model.backbone
    drops = [mod for mod in backbone.modules() if isinstance(mod, torch.nn.Dropout)]
    assert drops and backbone.config.dropout_rate > 0
    w.module.train()
    assert all(d.training for d in drops)
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["target_ids"])
    with torch.no_grad():
        a, b = w.module(**kw).logits, w.module(**kw).logits
    assert not torch.equal(a, b), "two training passes gave the same output: no dropout in the backbone"
    w.module.eval()
    assert not any(d.training for d in drops)
    with torch.no_grad():
        assert torch.equal(w.module(**kw).logits, w.module(**kw).logits)


# --- LST ------------------------------------------------------------------------------------------------


def ladder_reference(ladder, states, call_block, norm_fn):
    """h = down_0(ϕ_0); per side layer i: h = g_i·h + (1−g_i)·down_i(ϕ_{i+1}), h = f_i(h),
    g_i = sigmoid(α_i / T); then the final norm (dropout off in eval)."""
    h = states[0] @ ladder.first_down.weight.T + ladder.first_down.bias
    g = torch.sigmoid(ladder.alpha / ladder.temperature)
    for k, i in enumerate(ladder.layers):
        down = ladder.down[str(i)]
        h = g[k] * h + (1 - g[k]) * (states[i + 1] @ down.weight.T + down.bias)
        h = call_block(ladder.blocks[str(i)], h)
    return norm_fn(h)


def block_outputs(blocks, run):
    """ϕ_1..ϕ_N: each backbone block's own output, hooked while `run()` runs the backbone."""
    got = []
    hooks = [b.register_forward_hook(lambda mod, a, o: got.append(o[0] if isinstance(o, tuple) else o)) for b in blocks]
    try:
        out = run()
    finally:
        for h in hooks:
            h.remove()
    return out, got


def test_lst_bert_head_reads_only_the_up_projected_side_state():
    m, w, batch, _, _ = build("tiny_bert", "lst", "method.init=random", "method.side_layers=[1]")
    side, backbone = m.model.side, m.model.backbone
    randomize(side.encoder.first_down, 2)
    randomize(side.encoder.down, 3)
    with torch.no_grad():
        side.encoder.alpha.fill_(0.07)
    w.module.eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    add = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        ours = w.module(**inputs).logits
        out, raw = block_outputs(backbone.bert.encoder.layer, lambda: backbone.bert(**inputs, output_hidden_states=True))
        states = [out.hidden_states[0], *raw]
        h = ladder_reference(side.encoder, states, lambda blk, x: blk(x, attention_mask=add), lambda x: x)
        vec = h[:, 0] @ side.up.weight.T + side.up.bias  # up(side) alone: no ϕ_N in it
        ref = backbone.classifier(backbone.bert.pooler(vec.unsqueeze(1)))
        with_backbone = backbone.classifier(backbone.bert.pooler((vec + out.last_hidden_state[:, 0]).unsqueeze(1)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, with_backbone, atol=1e-3)
    assert type(side.encoder.blocks["1"]) is type(backbone.bert.encoder.layer[0])  # the backbone's own block type


def test_lst_t5_side_network_is_t5_blocks_and_the_lm_head_reads_only_up_side():
    m, w, batch, _, _ = build("tiny_t5", "lst", "method.init=random", "method.side_layers=all")
    side, t5 = m.model.side, m.model.backbone
    from transformers.models.t5.modeling_t5 import T5Block

    for ladder in (side.encoder, side.decoder):
        blocks = [ladder.blocks[str(i)] for i in ladder.layers]
        assert all(isinstance(b, T5Block) for b in blocks)
        assert [b.layer[0].SelfAttention.has_relative_attention_bias for b in blocks] == [True] + [False] * (len(blocks) - 1)
        assert blocks[0].layer[0].SelfAttention.q.weight.shape == (t5.config.num_heads * (t5.config.d_kv // 8), t5.config.d_model // 8)
    w.module.eval()
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["target_ids"]
    minf = torch.finfo(torch.float32).min
    pad = (1.0 - mask[:, None, None, :].float()) * minf
    with torch.no_grad():
        ours = w.module(input_ids=ids, attention_mask=mask, labels=labels).logits
        enc, enc_raw = block_outputs(t5.encoder.block, lambda: t5.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True))
        dec_ids = t5._shift_right(labels)
        dec, dec_raw = block_outputs(t5.decoder.block, lambda: t5.decoder(input_ids=dec_ids, encoder_hidden_states=enc.last_hidden_state,
                                                                           encoder_attention_mask=mask, output_hidden_states=True))

        def t5_norm(ln):
            return lambda x: ln.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon))

        def run(blocks_state, memory=None):
            def call(blk, x):
                n = x.shape[1]
                if memory is None:
                    mask_ = pad
                else:
                    mask_ = torch.triu(torch.full((n, n), minf), diagonal=1)[None, None]
                h, pb, cpb = blk(x, attention_mask=mask_, position_bias=blocks_state.get("pb"), encoder_hidden_states=memory,
                                 encoder_attention_mask=None if memory is None else pad,
                                 encoder_decoder_position_bias=blocks_state.get("cpb"))
                blocks_state.update(pb=pb, cpb=cpb)
                return h
            return call

        memory = ladder_reference(side.encoder, [enc.hidden_states[0], *enc_raw], run({}), t5_norm(side.encoder.norm))
        h = ladder_reference(side.decoder, [dec.hidden_states[0], *dec_raw], run({}, memory), t5_norm(side.decoder.norm))
        out = h @ side.up.weight.T + side.up.bias
        ref = t5.lm_head(out * t5.config.d_model ** -0.5)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_lst_t5_side_blocks_see_positions():
    """Relative position bias: reversing the positions of the inputs does not just reverse the
    side network's output (a block without position information is permutation-equivariant)."""
    m, w, batch, _, _ = build("tiny_t5", "lst", "method.init=random", "method.side_layers=all")
    ladder = m.model.side.encoder
    randomize(ladder.blocks, 4)
    ladder.eval()
    d, n = m.model.backbone.config.d_model, 6
    g = torch.Generator().manual_seed(5)
    states = [torch.randn(1, n, d, generator=g) for _ in range(len(ladder.layers) + 1)]
    mask = torch.zeros(1, 1, 1, n)
    with torch.no_grad():
        h = ladder(states, mask)
        flipped = ladder([s.flip(1) for s in states], mask)
        for blk in ladder.blocks.values():  # the same blocks without their position bias
            if blk.layer[0].SelfAttention.has_relative_attention_bias:
                blk.layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        h0, flipped0 = ladder(states, mask), ladder([s.flip(1) for s in states], mask)
    assert (flipped.flip(1) - h).abs().amax() > 1e-3
    torch.testing.assert_close(flipped0.flip(1), h0, rtol=1e-5, atol=1e-5)


def test_lst_published_side_layers_and_trainable_count_on_t5_base_shapes():
    """T5-base: side layers 1,2,3,5,6,7,9,10,11 of each stack, width 96, and the count of the
    official code: 1.74% of T5-base's parameters (the READ paper's LST row)."""
    from transformers import T5Config, T5ForConditionalGeneration

    from sparse_ft.methods.petl.lst import Lst
    from sparse_ft.methods.petl.side import model_dims

    cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12)
    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(cfg)
        method = build_method(OmegaConf.create({"name": "lst", "init": "random"}))
        side = Lst.build_side(method, t5, "seq2seq", model_dims(t5))
    assert side.layers == {"encoder": [1, 2, 3, 5, 6, 7, 9, 10, 11], "decoder": [1, 2, 3, 5, 6, 7, 9, 10, 11]}
    d, ds, ff, inner, buckets, heads = 768, 96, 384, 96, 32, 12
    attn = 4 * ds * inner
    enc_block = attn + 2 * ds + 2 * ds * ff
    dec_block = 2 * attn + 3 * ds + 2 * ds * ff
    ladder = (d * ds + ds) * 10 + 9 + ds + buckets * heads  # 1 + 9 down-projections, 9 gates, final norm, position bias
    expected = ladder * 2 + 9 * (enc_block + dec_block) + ds * d + d  # + up
    total = sum(p.numel() for p in t5.parameters())
    assert sum(p.numel() for p in side.parameters()) == expected
    assert round(100 * expected / total, 2) == 1.74


def _chain_reference(weights, importance, chain):
    """The official pruning (pruning_without_residual, L1 strategy) written out: per group of maps,
    keep the previous step's input dims and the rows with the largest L1 norm of the product of
    importances; norms keep the previous step's dims."""
    out, prev = {}, None
    for kind, names, width in chain:
        if kind == "embed":
            l1 = importance[names[0]].abs().sum(0)
            prev = torch.topk(l1, width).indices.sort().values
        elif kind == "norm":
            for n in names:
                out[n] = weights[n][prev]
        else:
            prod = math.prod(importance[n][:, prev] for n in names if n.endswith("weight"))
            rows = torch.topk(prod.abs().sum(1), width).indices.sort().values
            for n in names:
                out[n] = weights[n][rows][:, prev] if n.endswith("weight") else weights[n][rows]
            prev = rows
    return out


def bert_chain(layers, d, ff):
    chain = [("embed", ["bert.embeddings.word_embeddings.weight"], d),
             ("norm", ["bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"], None)]
    for i in range(layers):
        b = f"bert.encoder.layer.{i}."
        chain += [("linear", [b + f"attention.self.{x}.{p}" for x in ("query", "key", "value") for p in ("weight", "bias")], d),
                  ("linear", [b + "attention.output.dense.weight", b + "attention.output.dense.bias"], d),
                  ("norm", [b + "attention.output.LayerNorm.weight", b + "attention.output.LayerNorm.bias"], None),
                  ("linear", [b + "intermediate.dense.weight", b + "intermediate.dense.bias"], ff),
                  ("linear", [b + "output.dense.weight", b + "output.dense.bias"], d),
                  ("norm", [b + "output.LayerNorm.weight", b + "output.LayerNorm.bias"], None)]
    return chain


def _side_block_matches(m, pruned):
    ladder = m.model.side.encoder
    for i in ladder.layers:
        for key, t in ladder.blocks[str(i)].state_dict().items():
            assert torch.equal(t, pruned[f"bert.encoder.layer.{i}.{key}"]), (i, key)


def test_lst_side_blocks_start_as_the_backbone_pruned_by_magnitude():
    m, w, batch, _, _ = build("tiny_bert", "lst", "method.init=magnitude")
    backbone = m.model.backbone
    cfg = backbone.config
    state = {k: v.detach() for k, v in backbone.state_dict().items()}
    chain = bert_chain(cfg.num_hidden_layers, cfg.hidden_size // 8, cfg.intermediate_size // 8)
    _side_block_matches(m, _chain_reference(state, state, chain))


def test_lst_side_blocks_start_as_the_backbone_pruned_by_fisher_importance():
    """init=fisher (the paper's): importance = Σ_examples (∂ loss_example / ∂W)², computed here one
    example at a time on all the training examples (fisher_samples above their number)."""
    from sparse_ft.methods.base import MethodContext

    m, w, batch, feats, bundle = build("tiny_bert", "lst", "method.init=fisher", "method.fisher_samples=100000")
    backbone = m.model.backbone
    examples = [feats[i] for i in range(len(feats))]
    ctx = MethodContext(run_dir=None, device=torch.device("cpu"), seed=0, train_features=examples, collate=bundle.collate, loss=None)
    m.prepare(w.module, ctx)
    cfg = backbone.config
    chain = bert_chain(cfg.num_hidden_layers, cfg.hidden_size // 8, cfg.intermediate_size // 8)
    names = sorted({n for _, ns, _ in chain for n in ns})
    params = dict(backbone.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    backbone.eval()
    for n in names:
        params[n].requires_grad_(True)
    for ex in examples:
        b = bundle.collate([ex])
        logits = backbone(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
        loss = F.cross_entropy(logits, b["labels"])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        for n, g in zip(names, grads):
            fisher[n] += g.square()
    for n in names:
        params[n].requires_grad_(False)
    state = {k: v.detach() for k, v in backbone.state_dict().items()}
    magnitude = _chain_reference(state, state, chain)
    pruned = _chain_reference(state, fisher, chain)
    _side_block_matches(m, pruned)
    assert any(not torch.equal(pruned[k], magnitude[k]) for k in pruned if k.startswith("bert.encoder")), "Fisher picked what |W| picks"


# --- ERE, BITQ, LRA --------------------------------------------------------------------------------------


def low_rank_pair(seed=0):
    """Two matrices whose residuals have known ranks 2 and 3, and one unchanged."""
    g = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(24, 16, generator=g), "b.weight": torch.randn(16, 20, generator=g), "c.weight": torch.randn(8, 8, generator=g)}
    tuned = {k: v.clone() for k, v in base.items()}
    tuned["a.weight"] += 0.05 * torch.randn(24, 2, generator=g) @ torch.randn(2, 16, generator=g)
    tuned["b.weight"] += 0.05 * torch.randn(16, 3, generator=g) @ torch.randn(3, 20, generator=g)
    return base, tuned


def rtn_columns(x, bits):
    """Round-to-nearest on the grid lo + step·{0..2^b − 1} of each column (min–max)."""
    lo, hi = x.amin(0, keepdim=True), x.amax(0, keepdim=True)
    step = (hi - lo) / (2 ** bits - 1)
    return lo + torch.round((x - lo) / step) * step


def polar(x):
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    return u @ vh


def test_ere_reconstructs_a_known_low_rank_residual_as_the_paper_encodes_it(tmp_path):
    """Δ ≈ U D Vᵀ: truncated SVD at the allocated rank, U and V quantised per column at b bits
    (round to nearest), projected back onto orthonormal columns (Stiefel), D in fp16."""
    base, tuned = low_rank_pair()
    res = build_method(OmegaConf.create({"name": "ere", "rank_prior": 3, "bits": 4, "svd": "exact", "device": "cpu"})).compress(base, tuned, tmp_path / "b4")
    assert torch.equal(res.reconstructed["c.weight"], base["c.weight"])
    assert res.report["ranks"]["a.weight"] == 2 and res.report["ranks"]["b.weight"] >= 3  # at least the true ranks
    key = "a.weight"
    delta = (tuned[key] - base[key]).double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    uq, vq = rtn_columns(u[:, :2], 4), rtn_columns(vh[:2].T, 4)
    ref = polar(uq) @ torch.diag(s[:2].half().double()) @ polar(vq).T
    no_stiefel = uq @ torch.diag(s[:2].half().double()) @ vq.T
    got = res.reconstructed[key].double() - base[key].double()
    err = float((got - ref).norm() / delta.norm())
    assert err < 2e-3  # as the reference encodes it
    assert float((got - no_stiefel).norm() / delta.norm()) > 10 * err  # and the projection is part of it
    assert (got - delta).norm() / delta.norm() < 0.15  # 4 bits
    res8 = build_method(OmegaConf.create({"name": "ere", "rank_prior": 3, "bits": 8, "svd": "exact", "device": "cpu"})).compress(base, tuned, tmp_path / "b8")
    for key in ("a.weight", "b.weight"):  # the known residuals are recovered
        delta = tuned[key] - base[key]
        assert (res8.reconstructed[key] - tuned[key]).norm() / delta.norm() < 0.01


def test_bitq_quantises_every_residual_entry_per_row_round_to_nearest(tmp_path):
    base, tuned = low_rank_pair()
    bits = 3
    res = build_method(OmegaConf.create({"name": "bitq", "bits": bits, "axis": "row", "device": "cpu"})).compress(base, tuned, tmp_path)
    for key in ("a.weight", "b.weight"):
        delta = tuned[key] - base[key]
        lo, hi = delta.amin(1, keepdim=True), delta.amax(1, keepdim=True)
        step = (hi - lo) / (2 ** bits - 1)
        ref = lo + torch.round((delta - lo) / step) * step
        got = res.reconstructed[key] - base[key]
        assert ((got - delta).abs() <= step / 2 * 1.01 + 1e-6).all()  # within half a step of every entry
        for row in range(got.shape[0]):  # at most 2^b levels per row
            v = got[row].sort().values
            assert 1 + int((v.diff() > step[row] / 2).sum()) <= 2 ** bits
        assert ((got - ref).abs() < step * 0.02).float().mean() > 0.95  # the same grid points as the reference
    assert torch.equal(res.reconstructed["c.weight"], base["c.weight"])


def test_lra_stores_the_truncated_svd_at_one_rank(tmp_path):
    base, tuned = low_rank_pair()
    res = build_method(OmegaConf.create({"name": "lra", "rank": 2, "dtype": "float32", "svd": "exact", "device": "cpu"})).compress(base, tuned, tmp_path)
    for key in ("a.weight", "b.weight"):
        delta = (tuned[key] - base[key]).double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        ref = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]  # Eckart–Young: the best rank-2 approximation
        got = res.reconstructed[key].double() - base[key].double()
        assert (got - ref).norm() / delta.norm() < 1e-5
    delta = (tuned["a.weight"] - base["a.weight"]).double()  # rank 2: recovered exactly
    assert (res.reconstructed["a.weight"].double() - tuned["a.weight"].double()).norm() / delta.norm() < 1e-5


def test_lst_fisher_init_is_not_redone_on_resume():
    """A resumed run loads its side weights before prepare: prepare must not overwrite them."""
    from sparse_ft.methods.base import MethodContext

    m, w, batch, feats, bundle = build("tiny_bert", "lst", "method.init=fisher", "method.fisher_samples=4")
    block = m.model.side.encoder.blocks["0"].attention.self.query.weight
    randomize(m.model.side, 7)
    before = block.detach().clone()
    ctx = MethodContext(run_dir=None, device=torch.device("cpu"), seed=0, train_features=[feats[i] for i in range(8)],
                        collate=bundle.collate, loss=None)
    m.prepare(w.module, ctx, resumed=m.state_dict())  # what the train job does on resume
    assert torch.equal(block, before)
