"""Conformance of the sparse-update and PETL methods with their papers (issue 20): each test checks
the method on a tiny model against a small reference written here, from the paper's equations,
not by calling the project's code for the quantity under test.

- Diff Pruning (Guo et al. 2021; Louizos et al. 2018): hard-concrete gate statistics
  P(z ≠ 0) = σ(α − β log(−l/r)), P(z = 1) = σ(α − β log((1 − l)/(r − 1))), the expected-L0
  penalty (structured: × σ(α_g − β log(−l/r))), the gradients of θ = θ0 + z(α, u)·(z_g)·w by
  autograd, and the projection to exactly k entries (the k largest |δ|, δ = ẑ ⊙ w).
- (IA)³ (Liu et al. 2022): the model equals the base model whose keys and values (outputs) and
  feed-forward inner activation are multiplied by the learned vectors, on exactly those sites.
- LoRA (Hu et al. 2021): every adapted layer computes W x + b + (α/r) B A x.
- Houlsby adapters: the sublayer computes LN(x + A(dropout(W h))), A(y) = y + W_up f(W_down y);
  layer norms train, the rest of the backbone does not.
- Prompt tuning (Lester et al. 2021): the model equals the base model over [P; E(x)].
- BitFit (Ben Zaken et al. 2022): only bias terms (and the new head) move.
- FISH (Sung et al. 2021): mask = top-k of (1/N) Σ_i (∇ log p(y_i|x_i))², head always in.
- Random mask: exactly k distinct entries, head in, seeded.
- Dense: every parameter trains; one step equals plain AdamW on all parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from conftest import compose
from sparse_ft.jobs.context import seed_everything
from sparse_ft.methods import MethodContext, build_method
from sparse_ft.models import build_model
from sparse_ft.tasks import load_task


@pytest.fixture(scope="module", autouse=True)
def _warm():
    """Imports, tokenizer and data generation once, so each test's time is its own."""
    bundle_of()


def bundle_of(model: str = "tiny_bert", n: int = 16):
    cfg = compose([f"model={model}", "task=synthetic_nli", f"task.max_train_samples={n}", "task.max_eval_samples=8"])
    seed_everything(0)
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task, max_length=32)
    return bundle, bundle.encode(task, "train")


def ctx_of(tmp_path, bundle, feats, seed: int = 0) -> MethodContext:
    return MethodContext(tmp_path, torch.device("cpu"), seed, feats, bundle.collate, bundle.loss, bundle.per_example_loss,
                         bundle.logits if bundle.logits_fn else None)


def method(name: str, *overrides: str):
    return build_method(compose([f"method={name}", *overrides]).method)


def inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def head(module) -> set[str]:
    return {n for n, _ in module.named_parameters() if n.startswith("classifier.")}


# --- Diff Pruning ---------------------------------------------------------------------------------

L, R, BETA = -1.5, 1.5, 1.0


def diff_pruning(tmp_path, *overrides):
    bundle, feats = bundle_of()
    m = method("diff_pruning", "method.density=0.01", *overrides)
    m.prepare(bundle.module, ctx_of(tmp_path, bundle, feats))
    return bundle, m


def test_diff_pruning_hard_concrete_gates_have_louizos_statistics(tmp_path):
    """With w = 1 the body holds θ0 + z: the sampled gates' P(z ≠ 0) and P(z = 1), per α, are the
    hard-concrete's; the L0 penalty is λ Σ σ(α − β log(−l/r))."""
    bundle, m = diff_pruning(tmp_path, "method.structured=false")
    params = dict(bundle.module.named_parameters())
    name = "bert.embeddings.word_embeddings.weight"  # 30522 x 32: ~244k gates per α value
    levels = torch.tensor([-2.0, 0.0, 1.0, 3.0])
    rows = params[name].shape[0]
    with torch.no_grad():
        for n, a, w in zip(m.body, m.log_alpha, m.w):
            w.fill_(1.0)
            a.copy_(levels[torch.arange(rows) * 4 // rows].unsqueeze(1).expand_as(a) if n == name else torch.full_like(a, 2.0))
    theta0 = params[name].detach().clone()
    m._sample()
    m._write_train()
    z = params[name].detach() - theta0
    level = torch.arange(rows) * 4 // rows
    for i, alpha in enumerate(levels.tolist()):
        zi = z[level == i]
        nonzero = (params[name].detach()[level == i] != theta0[level == i]).float().mean().item()
        one = (zi > 1 - 1e-5).float().mean().item()
        assert nonzero == pytest.approx(1 / (1 + math.exp(-(alpha - BETA * math.log(-L / R)))), abs=5e-3), alpha
        assert one == pytest.approx(1 / (1 + math.exp(-(alpha - BETA * math.log((1 - L) / (R - 1))))), abs=5e-3), alpha
        assert float(zi.min()) >= -1e-6 and float(zi.max()) <= 1 + 1e-6
    # expected L0 (the penalty, before λ) over every gate
    shift = BETA * math.log(-L / R)
    expected = sum(torch.sigmoid(a.detach().double() - shift).sum() for a in m.log_alpha)
    total = sum(a.numel() for a in m.log_alpha)
    assert float(m.extra_loss()) == pytest.approx(1.25e-7 * float(expected), rel=1e-5)
    assert m._expected_density() == pytest.approx(float(expected) / total, rel=1e-5)


def test_structured_diff_pruning_gates_whole_tensors_and_its_penalties(tmp_path):
    bundle, m = diff_pruning(tmp_path)  # structured is the default (the authors' script)
    assert len(m.group_alpha) == len(m.log_alpha) == len(m.body)
    shut = "bert.encoder.layer.0.attention.self.query.weight"
    with torch.no_grad():
        for n, a, g, w in zip(m.body, m.log_alpha, m.group_alpha, m.w):
            w.fill_(1.0)
            a.fill_(12.0)  # z_i = 1 but with probability ~1e-5
            g.fill_(-12.0 if n == shut else 12.0)
    before = {n: p.detach().clone() for n, p in bundle.module.named_parameters()}
    m._sample()
    m._write_train()
    after = dict(bundle.module.named_parameters())
    assert torch.equal(after[shut].detach(), before[shut]), "a closed group gate must close the whole tensor"
    assert not torch.equal(after["bert.encoder.layer.0.attention.self.key.weight"].detach(), before["bert.encoder.layer.0.attention.self.key.weight"])
    # E[‖δ‖₀] = Σ_g σ(α_g − c) Σ_{i∈g} σ(α_i − c)  (Guo et al. §3.3): the reported expected density and
    # the `product` penalty; the authors' script's penalty (`sum`, the default) adds Σ_g σ(α_g − c) instead
    with torch.no_grad():
        for a, g in zip(m.log_alpha, m.group_alpha):
            a.uniform_(-2, 4)
            g.uniform_(-2, 4)
    c = BETA * math.log(-L / R)
    alphas = [(a.detach().double(), g.detach().double()) for a, g in zip(m.log_alpha, m.group_alpha)]
    product = sum(float(torch.sigmoid(g - c)) * float(torch.sigmoid(a - c).sum()) for a, g in alphas)
    additive = sum(float(torch.sigmoid(a - c).sum()) + float(torch.sigmoid(g - c)) for a, g in alphas)
    assert float(m.extra_loss()) == pytest.approx(1.25e-7 * additive, rel=1e-5)
    assert m._expected_density() == pytest.approx(product / sum(a.numel() for a, _ in alphas), rel=1e-5)
    m.cfg.group_penalty = "product"
    assert float(m.extra_loss()) == pytest.approx(1.25e-7 * product, rel=1e-5)


@pytest.mark.parametrize("structured", [False, True])
def test_diff_pruning_gradients_are_those_of_theta0_plus_gated_w(tmp_path, monkeypatch, structured):
    """∂L/∂w and ∂L/∂α (and ∂L/∂α_g) routed by the method equal autograd's through
    θ = θ0 + z(α, u)·z_g(α_g, u_g)·w, z = clamp(σ((log u − log(1−u) + α)/β)(r−l)+l, 0, 1)."""
    bundle, m = diff_pruning(tmp_path, f"method.structured={str(structured).lower()}")
    gen = torch.Generator().manual_seed(3)
    noise: dict[int, torch.Tensor] = {}

    def rand_like(t, *args, **kwargs):  # the uniform draws, recorded per gate tensor
        u = torch.rand(t.shape, generator=gen) * 0.98 + 0.01
        noise[id(t)] = u
        return u

    with torch.no_grad():
        for a, w in zip(m.log_alpha, m.w):
            a.uniform_(-1.0, 3.0, generator=gen)  # many gates inside (0, 1)
            w.normal_(0, 0.1, generator=gen)
        for g in m.group_alpha:
            g.uniform_(-1.0, 1.0, generator=gen)
    monkeypatch.setattr(torch, "rand_like", rand_like)
    m._sample()
    monkeypatch.undo()
    params = [p for n, p in bundle.module.named_parameters() if n in set(m.body)]
    upstream = [torch.randn(p.shape, generator=gen) for p in params]
    for p, c in zip(params, upstream):
        p.grad = c.clone()
    m.after_backward(at_step(0))

    def gate(alpha, u):
        return (torch.sigmoid((u.log() - (1 - u).log() + alpha) / BETA) * (R - L) + L).clamp(0, 1)

    for i, (a, w, c) in enumerate(zip(m.log_alpha, m.w, upstream)):
        a_ref = a.detach().clone().requires_grad_(True)
        w_ref = w.detach().clone().requires_grad_(True)
        zg, g_ref = 1.0, None
        if structured:
            g_ref = m.group_alpha[i].detach().clone().requires_grad_(True)
            zg = gate(g_ref, noise[id(m.group_alpha[i])])
        theta = m.theta0[i] + gate(a_ref, noise[id(a)]) * zg * w_ref
        (theta * c).sum().backward()
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=2e-6)
        # log1p(−u) vs log(1 − u): float rounding only; a wrong gate or clamp boundary is off by ~|c·w|
        torch.testing.assert_close(a.grad, a_ref.grad, rtol=1e-4, atol=2e-6)
        if structured:
            torch.testing.assert_close(m.group_alpha[i].grad, g_ref.grad, rtol=1e-4, atol=1e-7)
    assert any(bool(a.grad.abs().sum() > 0) for a in m.log_alpha), "no gate received a gradient"


def test_diff_pruning_projects_to_exactly_the_k_largest_deltas(tmp_path):
    bundle, m = diff_pruning(tmp_path, "method.structured=false")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for a, w in zip(m.log_alpha, m.w):
            a.uniform_(-1.0, 3.0, generator=gen)  # deterministic gates: 0 for α ≤ 0, in (0, 1), and 1
            w.normal_(0, 1e-2, generator=gen)
    theta0 = {n: t.clone() for n, t in zip(m.body, m.theta0)}
    # reference: δ = min(1, max(0, σ(α)(r − l) + l)) ⊙ w, the k_body largest |δ| over all tensors
    deltas = {n: ((torch.sigmoid(a.detach()) * (R - L) + L).clamp(0, 1) * w.detach()).view(-1) for n, a, w in zip(m.body, m.log_alpha, m.w)}
    flat = torch.cat([deltas[n] for n in m.body])
    k_body = m.k - sum(p.numel() for n, p in bundle.module.named_parameters() if n in head(bundle.module))
    assert 0 < k_body < int((flat != 0).sum())
    top = torch.topk(flat.abs(), k_body + 1)
    assert top.values[-2] > top.values[-1], "the reference needs a strict k-th value"
    offsets, start = {}, 0
    for n in m.body:
        offsets[n] = start
        start += deltas[n].numel()
    chosen = set(top.indices[:-1].tolist())
    m.finalize(bundle.module, tmp_path)
    params = dict(bundle.module.named_parameters())
    changed = set()
    for n in m.body:
        diff = (params[n].detach().view(-1) != theta0[n].view(-1)).nonzero().view(-1)
        changed |= {offsets[n] + int(i) for i in diff}
        torch.testing.assert_close(params[n].detach().view(-1)[diff], theta0[n].view(-1)[diff] + deltas[n][diff])
    assert changed == chosen and len(changed) == k_body


def test_diff_pruning_defaults_are_the_authors(tmp_path):
    """α in its own optimizer group at lr 0.1, constant; structured with the script's penalty; the
    second stage on (3 epochs, lr 5e-5)."""
    from sparse_ft.train.optim import build_optimizer, build_scheduler, clip_sets

    _, m = diff_pruning(tmp_path)
    assert m.cfg.structured is True and m.cfg.group_penalty == "sum" and len(m.group_alpha) == len(m.body)
    groups = m.param_groups(0.0)
    alpha = [g for g in groups if any(p is m.log_alpha[0] for p in g["params"])]
    assert len(alpha) == 1 and alpha[0]["lr"] == 0.1 and len(alpha[0]["params"]) == 2 * len(m.log_alpha)
    assert not any(p is w for g in alpha for p in g["params"] for w in m.w)
    trainer = compose(["trainer.lr=5e-5", "trainer.warmup_ratio=0.1"]).trainer
    opt = build_optimizer(trainer, groups)
    sched = build_scheduler(trainer, opt, 10)
    for _ in range(5):
        opt.step()
        sched.step()
    lrs = {id(g["params"][0]): g["lr"] for g in opt.param_groups}
    assert lrs[id(m.log_alpha[0])] == 0.1  # no warm-up, no decay
    assert lrs[id(m.w[0])] == pytest.approx(5e-5 * (1 - 4 / 9))  # the trainer's schedule: 1 warm-up step, linear decay
    # trainer.max_grad_norm clips α's gradients apart from w's (the authors clip the two separately)
    sets = clip_sets(opt)
    assert len(sets) == 2 and {id(p) for p in sets[1]} == {id(p) for p in [*m.log_alpha, *m.group_alpha]}
    stages = m.stages()
    assert [s.name for s in stages] == ["diff", "finetune_projection"]
    assert stages[1].overrides == {"epochs": 3, "max_steps": 0, "lr": 5e-5}


# --- (IA)^3 ---------------------------------------------------------------------------------------

# (IA)^3 scales the keys and values (outputs) of every attention and the FFN's inner activation.
# Per family: which module's output a learned vector multiplies, given the module peft wrapped.
IA3_SITES = {
    "tiny_bert": [(r"attention\.self\.(key|value)$", None), (r"(layer\.\d+)\.output\.dense$", r"\1.intermediate")],
    "tiny_opt": [(r"self_attn\.(k_proj|v_proj)$", None), (r"(layers\.\d+)\.fc2$", r"\1.activation_fn")],
    "tiny_t5": [(r"(SelfAttention|EncDecAttention)\.(k|v)$", None), (r"(DenseReluDense)\.wo$", r"\1.act")],
}
IA3_EXPECTED = {  # the sites, from the architecture alone
    "tiny_bert": r"(attention\.self\.(key|value)|layer\.\d+\.intermediate)$",
    "tiny_opt": r"(self_attn\.(k_proj|v_proj)|layers\.\d+\.activation_fn)$",
    "tiny_t5": r"((SelfAttention|EncDecAttention)\.(k|v)|DenseReluDense\.act)$",
}


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_opt", "tiny_t5"])
def test_ia3_scales_exactly_keys_values_and_the_ffn_activation(model):
    bundle, feats = bundle_of(model, n=8)
    reference = copy.deepcopy(bundle.module).eval()
    m = method("ia3")
    w = m.wrap(bundle, None)
    gen = torch.Generator().manual_seed(0)
    sites = {}
    for name, p in w.module.named_parameters():
        if ".ia3_l." not in name:
            continue
        with torch.no_grad():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        module = name.split(".ia3_l.")[0].removeprefix("base_model.model.")
        for pattern, activation in IA3_SITES[model]:
            if re.search(pattern, module):
                site = re.sub(pattern, activation, module) if activation else module
                sites[site] = p.detach().reshape(-1)
                break
        else:
            pytest.fail(f"(IA)^3 scaled {module}, which is neither a key, a value nor an FFN")
    expected = {n for n, _ in reference.named_modules() if re.search(IA3_EXPECTED[model], n)}
    assert set(sites) == expected
    hooks = [dict(reference.named_modules())[s].register_forward_hook(lambda mod, a, out, l=l: out * l) for s, l in sites.items()]
    batch = bundle.collate(feats[:4])
    t5 = model == "tiny_t5"
    args = {**inputs(batch), **({"labels": batch["target_ids"]} if t5 else {"output_hidden_states": True})}

    def output(module):  # T5: the LM logits; the classifiers: the last hidden state (a random head flattens the logits)
        out = module(**args)
        return out.logits if t5 else out.hidden_states[-1]

    w.module.eval()
    with torch.no_grad():
        ours = output(w.module)
        ref = output(reference)
        for h in hooks:
            h.remove()
        plain = output(reference)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours, plain, atol=1e-4), "the vectors must change the output"


# --- LoRA -----------------------------------------------------------------------------------------


def test_lora_layers_compute_w_x_plus_scaled_b_a_x():
    bundle, _ = bundle_of(n=8)
    m = method("lora", "method.r=4", "method.alpha=12")
    w = m.wrap(bundle, None)
    gen = torch.Generator().manual_seed(0)
    layers = [mod for _, mod in w.module.named_modules() if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {})]
    assert layers
    for mod in layers:
        a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
        with torch.no_grad():
            b.copy_(torch.randn(b.shape, generator=gen))
        base = mod.get_base_layer()
        x = torch.randn(3, base.in_features, generator=gen)
        mod.eval()
        with torch.no_grad():
            ref = x @ base.weight.T + base.bias + (12 / 4) * (x @ a.T) @ b.T
            torch.testing.assert_close(mod(x), ref, rtol=1e-5, atol=1e-6)


# --- Houlsby adapters -----------------------------------------------------------------------------


def test_houlsby_adapter_sits_after_the_dropout_and_layer_norms_train():
    bundle, feats = bundle_of(n=8)
    assert bundle.module.config.hidden_dropout_prob > 0
    reference, untouched = copy.deepcopy(bundle.module), copy.deepcopy(bundle.module)
    m = method("adapter", "method.bottleneck=4")
    w = m.wrap(bundle, None)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.model.adapters.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    backbone = m.model.backbone
    for name, p in backbone.named_parameters():
        is_ln = "LayerNorm" in name
        assert p.requires_grad == (is_ln or name.startswith("classifier.")), name

    def adapter_fn(key):
        ad = m.model.adapters[key]  # its weights; the computation is written here
        return lambda y: y + torch.relu(y @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias

    def sublayer(mod, key):  # Houlsby: LN(x + A(dropout(W h)))
        a = adapter_fn(key)
        return lambda hidden_states, input_tensor: mod.LayerNorm(a(mod.dropout(mod.dense(hidden_states))) + input_tensor)

    for name, mod in reference.named_modules():
        if re.search(r"layer\.\d+\.(attention\.output|output)$", name):
            mod.forward = sublayer(mod, f"{name}.dropout".replace(".", "__"))
    batch = bundle.collate(feats[:4])
    w.module.train()
    reference.train()
    with torch.no_grad():
        torch.manual_seed(7)
        ours = w.module(**inputs(batch)).logits
        torch.manual_seed(7)
        ref = reference(**inputs(batch)).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # the earlier placement (before the dropout) computes something else in training
    old = method("adapter", "method.bottleneck=4", "method.placement=after_projection", "method.train_layer_norms=false")
    w2 = old.wrap(dataclasses.replace(bundle, module=untouched), None)
    old.model.adapters.load_state_dict({k.replace("__dropout.", "__dense."): v for k, v in m.model.adapters.state_dict().items()})
    assert not any(p.requires_grad for n, p in old.model.backbone.named_parameters() if "LayerNorm" in n)
    w2.module.train()
    with torch.no_grad():
        torch.manual_seed(7)
        assert not torch.allclose(w2.module(**inputs(batch)).logits, ours, atol=1e-5)


@pytest.mark.parametrize("places", ["both", "ffn"])
def test_opt_adapter_moves_the_functional_dropout_in_front_of_the_adapter(places):
    """OPT applies its residual dropout functionally: the hooks apply it before the adapter (layer's
    own set to 0). With the zero-init (identity) adapters, training-mode outputs under the same seed
    equal the plain backbone's: the dropout is where it was, only the adapter now follows it."""
    bundle, feats = bundle_of("tiny_opt", n=8)
    bundle.module.config.dropout = 0.3
    for layer in bundle.module.model.decoder.layers:
        layer.dropout = 0.3
    plain = copy.deepcopy(bundle.module).train()
    m = method("adapter", "method.bottleneck=4", f"method.places={places}")
    w = m.wrap(bundle, None)
    assert all(layer.dropout == 0.0 for layer in m.model.backbone.model.decoder.layers)
    batch = bundle.collate(feats[:4])
    w.module.train()
    with torch.no_grad():
        torch.manual_seed(3)
        ours = w.module(**inputs(batch)).logits
        torch.manual_seed(3)
        ref = plain(**inputs(batch)).logits
        torch.manual_seed(4)
        other = plain(**inputs(batch)).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ref, other), "dropout must be active for this check"


# --- prompt tuning --------------------------------------------------------------------------------


def test_prompt_tuning_prepends_soft_tokens_to_the_input_embeddings():
    bundle, feats = bundle_of(n=8)
    reference = copy.deepcopy(bundle.module).eval()
    m = method("prompt_tuning", "method.num_virtual_tokens=5")
    w = m.wrap(bundle, None)
    prompt = [p for n, p in w.module.named_parameters() if "prompt_encoder." in n]
    assert len(prompt) == 1 and prompt[0].shape == (5, bundle.module.config.hidden_size)
    trainable = {n for n, p in w.module.named_parameters() if p.requires_grad}
    assert all("prompt_encoder." in n or "classifier" in n for n in trainable)
    batch = bundle.collate(feats[:4])
    w.module.eval()
    with torch.no_grad():
        ours = w.module(**inputs(batch)).logits
        p = prompt[0].detach().unsqueeze(0).expand(4, -1, -1)
        emb = torch.cat([p, reference.get_input_embeddings()(batch["input_ids"])], 1)
        mask = torch.cat([torch.ones(4, 5, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], 1)
        types = torch.cat([torch.zeros(4, 5, dtype=batch["token_type_ids"].dtype), batch["token_type_ids"]], 1)
        ref = reference(inputs_embeds=emb, attention_mask=mask, token_type_ids=types).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# --- the masked methods: one optimizer step as the trainer takes it ------------------------------


def at_step(step: int):
    """What a method's per-step event hooks read from the trainer: `trainer.state.step`."""
    from types import SimpleNamespace

    return SimpleNamespace(state=SimpleNamespace(step=step))


def train_steps(m, bundle, feats, steps: int = 2, lr: float = 1e-2):
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=lr)
    bundle.module.train()
    for step in range(steps):
        bundle.loss(bundle.collate(feats[4 * step : 4 * step + 4])).backward()
        m.after_backward(at_step(step))
        opt.step()
        m.after_step(at_step(step))
        opt.zero_grad(set_to_none=True)
        bundle.module.zero_grad(set_to_none=True)


def test_bitfit_moves_only_the_bias_terms_and_the_head(tmp_path):
    bundle, feats = bundle_of()
    before = {n: p.detach().clone() for n, p in bundle.module.named_parameters()}
    biases = {n for n in before if n.endswith(".bias")}
    m = method("bitfit")
    m.prepare(bundle.module, ctx_of(tmp_path, bundle, feats))
    assert m.trainable_count() == sum(before[n].numel() for n in biases | head(bundle.module))
    train_steps(m, bundle, feats)
    changed = {n for n, p in bundle.module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= biases | head(bundle.module)
    assert len(changed & biases) > len(biases) // 2, "the biases should train"


def test_head_only_moves_only_the_new_head(tmp_path):
    bundle, feats = bundle_of()
    before = {n: p.detach().clone() for n, p in bundle.module.named_parameters()}
    heads = head(bundle.module)  # the test's own list of the parameters outside the pretrained body
    assert heads
    m = method("head_only")
    m.prepare(bundle.module, ctx_of(tmp_path, bundle, feats))
    assert m.trainable_count() == sum(before[n].numel() for n in heads)
    train_steps(m, bundle, feats)
    changed = {n for n, p in bundle.module.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= heads  # the backbone stays bit-identical
    with pytest.raises(Exception, match="method.classifier_in_mask"):
        method("head_only", "method.classifier_in_mask=false")


def test_fish_mask_is_the_top_k_of_the_mean_squared_per_example_gradient(tmp_path):
    bundle, feats = bundle_of(n=12)
    module = bundle.module
    # reference: F = (1/N) Σ_i (∇ −log p(y_i|x_i))², one example at a time, eval mode
    module.eval()
    params = {n: p for n, p in module.named_parameters()}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(feats)):
        batch = bundle.collate([feats[i]])
        logits = module(**inputs(batch)).logits
        nll = -torch.log_softmax(logits, -1)[0, batch["labels"][0]]
        grads = torch.autograd.grad(nll, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                fisher[n] += g.detach() ** 2 / len(feats)
    heads = head(module)
    body = [n for n in params if n not in heads]
    total = sum(p.numel() for p in params.values())
    density = 0.002
    k = round(density * total)
    k_body = k - sum(params[n].numel() for n in heads)
    flat = torch.cat([fisher[n].view(-1) for n in body])
    top = torch.topk(flat, k_body + 1)
    assert top.values[-2] > top.values[-1], "the reference needs a strict k-th value"
    offsets = dict(zip(body, torch.tensor([0] + [params[n].numel() for n in body]).cumsum(0).tolist()))
    m = method("fish", f"method.density={density}", f"method.num_samples={len(feats)}")
    m.prepare(module, ctx_of(tmp_path, bundle, feats))
    chosen = {offsets[n] + int(i) for n, idx in m.mask.items() if n in body for i in idx}
    assert chosen == set(top.indices[:-1].tolist())
    assert all(m.mask[n].numel() == params[n].numel() for n in heads)
    assert m.trainable_count() == k


def test_random_mask_draws_exactly_k_distinct_entries_seeded(tmp_path):
    masks = []
    bundle, feats = bundle_of(n=8)
    base = copy.deepcopy(bundle.module)
    for seed in (0, 0, 1):
        bundle.module = copy.deepcopy(base)
        params = dict(bundle.module.named_parameters())
        total = sum(p.numel() for p in params.values())
        m = method("random_mask", "method.density=0.01")
        m.prepare(bundle.module, ctx_of(tmp_path, bundle, feats, seed=seed))
        mask = {n: idx.long() for n, idx in m.mask.items()}
        assert sum(i.numel() for i in mask.values()) == round(0.01 * total) == m.trainable_count()
        for n, idx in mask.items():
            if not idx.numel():
                continue
            assert idx.unique().numel() == idx.numel() and int(idx.min()) >= 0 and int(idx.max()) < params[n].numel()
        assert all(mask[n].numel() == params[n].numel() for n in head(bundle.module))
        masks.append(mask)
    same = all(torch.equal(masks[0][n].sort().values, masks[1][n].sort().values) for n in masks[0])
    differ = any(n not in masks[2] or not torch.equal(masks[0][n].sort().values, masks[2][n].sort().values) for n in masks[0])
    assert same and differ
    # trained: only the drawn entries move
    before = {n: p.detach().clone() for n, p in bundle.module.named_parameters()}
    train_steps(m, bundle, feats)
    for n, p in bundle.module.named_parameters():
        moved = set((p.detach().view(-1) != before[n].view(-1)).nonzero().view(-1).tolist())
        assert moved <= set(masks[2].get(n, torch.zeros(0, dtype=torch.long)).tolist()), n


def test_dense_trains_every_parameter_like_plain_adamw(tmp_path):
    bundle, feats = bundle_of(n=8)
    reference = copy.deepcopy(bundle.module)
    m = method("dense")
    m.prepare(bundle.module, ctx_of(tmp_path, bundle, feats))
    total = sum(p.numel() for p in bundle.module.parameters())
    assert m.trainable_count() == total
    assert sum(p.numel() for g in m.param_groups(0.0) for p in g["params"]) == total
    opt = torch.optim.AdamW(m.param_groups(0.0), lr=1e-3)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, weight_decay=0.0)
    batch = bundle.collate(feats[:4])
    for module, o in ((bundle.module, opt), (reference, ref_opt)):
        module.eval()  # no dropout: the two passes see the same computation
        logits = module(**inputs(batch)).logits
        nn.functional.cross_entropy(logits, batch["labels"]).backward()
        o.step()
    for (n, p), q in zip(bundle.module.named_parameters(), reference.parameters()):
        assert torch.equal(p.detach(), q.detach()), n


def test_bert_base_is_uncased_and_the_cased_checkpoint_has_its_own_config():
    """PST, Essential Sparsity and most GLUE baselines use bert-base-uncased (issue 20, item 16)."""
    assert compose(["model=bert_base"]).model.name_or_path == "bert-base-uncased"
    cased = compose(["model=bert_base_cased"]).model
    assert cased.name_or_path == "bert-base-cased" and cased.name == "bert_base_cased"
