"""Data-to-text generation with causal LMs (issue 23, part 3): E2E / DART / WebNLG from their
official files, the loss on the text only, decoding, BLEU/TER through sacrebleu (its documented
examples), metrics that cannot be computed named n/a, and bad input."""

import pytest
import torch
from conftest import compose, run_inprocess
from nlg_fixtures import make_dart, make_e2e, make_webnlg

from sparse_ft.config.validation import ConfigError, validate
from sparse_ft.tasks import DataError, load_task
from sparse_ft.tasks.nlg import corpus_scores

SACREBLEU_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
SACREBLEU_REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
                  ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]


def test_bleu_matches_sacrebleus_documented_examples():
    per_example = [list(r) for r in zip(*SACREBLEU_REFS)]  # our layout: every reference of each hypothesis
    assert corpus_scores(SACREBLEU_SYS, per_example)["bleu"] == pytest.approx(0.4853, abs=5e-5)  # README: BLEU = 48.53
    # "Variable Number of References": the first sentence loses its first reference -> BLEU = 29.44
    variable = [["The dog had bit the man."], *per_example[1:]]
    assert corpus_scores(SACREBLEU_SYS, variable)["bleu"] == pytest.approx(0.2944, abs=5e-5)


def test_ter_on_hand_computed_edits_with_a_variable_number_of_references():
    assert corpus_scores(["a b c"], [["a b d"]])["ter"] == pytest.approx(1 / 3)  # 1 substitution / 3 reference words
    # sentence 1: 1 edit, reference length 3; sentence 2: min edits 1, mean reference length (3 + 1) / 2 = 2
    # corpus TER = (1 + 1) / (3 + 2) = 0.4 (a missing reference must not count as an empty one)
    assert corpus_scores(["a b c", "a b c"], [["a b d"], ["a b d", "zzz"]])["ter"] == pytest.approx(0.4)


def test_e2e_groups_references_per_mr(tmp_path):
    root = make_e2e(tmp_path / "e2e")
    task = load_task(compose(["task=e2e", f"task.data_dir={root}"]).task, seed=0)
    assert task.sizes() == {"train": 6, "validation": 3, "test": 3}  # training: (MR, reference) pairs
    ex = task.splits["validation"][2]
    assert ex.source == "name[Bibimbap House], food[Korean]" and len(ex.references) == 3
    assert task.main_metric == "bleu" and set(task.info["not_available"]) == {"nist", "meteor", "rouge_l", "cider"}
    assert all(v.startswith("n/a: ") for v in task.info["not_available"].values())


def test_dart_and_webnlg_linearise_the_triples(tmp_path):
    dart = load_task(compose(["task=dart", f"task.data_dir={make_dart(tmp_path / 'd')}"]).task, seed=0)
    assert dart.splits["validation"][0].source == "Mars Hill College : JOINED : 1973 | Mars Hill College : LOCATION : Mars Hill, North Carolina"
    assert dart.splits["validation"][1].references == ("Aarhus Airport serves Aarhus.", "Aarhus is served by Aarhus Airport.")
    web = load_task(compose(["task=webnlg", f"task.data_dir={make_webnlg(tmp_path / 'w')}"]).task, seed=0)
    assert web.splits["test"][1].source == "Alan_Bean : nationality : United_States | Alan_Bean : occupation : Test_pilot"
    assert len(web.splits["test"][0].references) == 2 and web.sizes()["train"] == 3
    assert set(web.info["not_available"]) == {"meteor"}


def test_missing_files_and_tables_without_references_name_the_file(tmp_path):
    with pytest.raises(DataError, match="devset.csv: missing"):
        root = make_e2e(tmp_path / "e")
        (root / "devset.csv").unlink()
        load_task(compose(["task=e2e", f"task.data_dir={root}"]).task, seed=0)
    root = make_e2e(tmp_path / "e2")
    (root / "testset_w_refs.csv").write_text("mr,ref\nname[X],\n")
    with pytest.raises(DataError, match="testset_w_refs.csv: table 0 .* has no reference"):
        load_task(compose(["task=e2e", f"task.data_dir={root}"]).task, seed=0)


def test_loss_is_on_the_text_only_and_prompts_are_left_padded(tmp_path):
    from sparse_ft.models import build_model

    cfg = compose(["model=tiny_gpt2", "task=e2e", f"task.data_dir={make_e2e(tmp_path / 'e')}"])
    task = load_task(cfg.task, seed=0)
    bundle = build_model(cfg.model, task, max_length=64)
    tok, eos = bundle.tokenizer, bundle.tokenizer.sep_token_id
    f = bundle.encode(task, "train")[0]
    prompt = tok(task.splits["train"][0].source, add_special_tokens=False)["input_ids"]
    text = tok(task.splits["train"][0].target, add_special_tokens=False)["input_ids"]
    assert f["input_ids"] == prompt + [eos] + text + [eos]
    assert f["lm_labels"] == [-100] * (len(prompt) + 1) + text + [eos]
    batch = bundle.collate(bundle.encode(task, "validation"))
    assert (batch["attention_mask"][:, -1] == 1).all()  # every prompt ends at the right edge
    # the loss equals an independent next-token cross-entropy over the text tokens only
    bundle.module.eval()  # no dropout
    train = bundle.collate(bundle.encode(task, "train")[:2])
    logits = bundle.module(input_ids=train["input_ids"], attention_mask=train["attention_mask"]).logits
    nll, count = 0.0, 0
    for i in range(2):
        for t in range(1, train["input_ids"].shape[1]):
            if train["lm_labels"][i, t] != -100:
                nll -= torch.log_softmax(logits[i, t - 1], -1)[train["lm_labels"][i, t]].item()
                count += 1
    assert bundle.loss(train).item() == pytest.approx(nll / count, rel=1e-4)


def test_gpt2_conv1d_becomes_an_equivalent_linear():
    from transformers import GPT2Config, GPT2LMHeadModel

    from sparse_ft.models.causal_lm import conv1d_to_linear

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids).logits
    assert conv1d_to_linear(model) == 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj
    assert isinstance(model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert torch.allclose(model(ids).logits, before, atol=1e-5)


@pytest.mark.parametrize("task,maker", [("e2e", make_e2e), ("dart", make_dart), ("webnlg", make_webnlg)])
def test_tiny_gpt2_runs_each_task_end_to_end(tmp_path, task, maker):
    root = maker(tmp_path / task)
    method = {"e2e": "pst", "dart": "omp", "webnlg": "lora"}[task]
    s = run_inprocess(tmp_path / "r", ["model=tiny_gpt2", f"task={task}", f"task.data_dir={root}", f"method={method}",
                                       "task.generation.max_new_tokens=6", "task.generation.num_beams=2", "trainer.max_steps=2",
                                       "trainer.batch_size=4"])
    assert s["status"] == "completed"
    for split in ("validation", "test"):
        m = s["metrics"][split]
        assert 0 <= m["bleu"] <= 1 and m["main"] == m["bleu"] and m["ter"] >= 0
    assert all(v.startswith("n/a: ") for v in s["metrics_not_available"].values())
    assert (tmp_path / "r" / "checkpoints" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("model,task", [("tiny_gpt2", "rte"), ("gpt2", "cifar100"), ("tiny_bert", "e2e"), ("tiny_opt", "dart"),
                                        ("tiny_vit", "webnlg"), ("gpt2_medium", "squad")])
def test_models_and_tasks_that_do_not_fit_fail_naming_model(model, task):
    with pytest.raises(ConfigError, match="model"):
        validate(compose([f"model={model}", f"task={task}"]))


def test_predict_test_and_classification_only_options_fail_before_loading():
    with pytest.raises(ConfigError, match="trainer.predict"):
        validate(compose(["model=tiny_gpt2", "task=e2e", "trainer.predict=test"]))
    with pytest.raises(ConfigError, match="method.fisher"):
        validate(compose(["model=tiny_gpt2", "task=e2e", "method=fish", "method.fisher=expected"]))
    for method in ("adapter", "ia3", "prompt_tuning", "read", "lst"):
        with pytest.raises(ConfigError, match=f"method.name.*method={method} cannot run task=e2e"):
            validate(compose(["model=tiny_gpt2", "task=e2e", f"method={method}"]))
    with pytest.raises(ConfigError, match="task.generation.num_beams"):
        validate(compose(["model=tiny_gpt2", "task=e2e", "task.generation.num_beams=0"]))


def test_e2e_from_datasets_groups_like_the_csv(tmp_path):
    """task.data_dir=null reads `datasets` (tuetschek/e2e_nlg's columns; here a local copy of them)."""
    import json

    from nlg_fixtures import E2E_ROWS

    hf = tmp_path / "e2e_hf"
    hf.mkdir()
    for split in ("train", "validation", "test"):
        (hf / f"{split}.jsonl").write_text("\n".join(json.dumps({"meaning_representation": mr, "human_reference": ref})
                                                     for mr, ref in E2E_ROWS))
    a = load_task(compose(["task=e2e", "task.data_dir=null", f"task.hf_dataset={hf}"]).task, seed=0)
    b = load_task(compose(["task=e2e", f"task.data_dir={make_e2e(tmp_path / 'csv')}"]).task, seed=0)
    for split in ("train", "validation", "test"):
        assert [(e.source, e.target, e.references) for e in a.splits[split]] == [(e.source, e.target, e.references) for e in b.splits[split]]
    with pytest.raises(ConfigError, match="task.data_dir"):  # DART / WebNLG read only the official files
        validate(compose(["model=tiny_gpt2", "task=dart", "task.data_dir=null"]))


def test_fish_sparse_delta_on_gpt2_rebuilds_the_final_checkpoint(tmp_path):
    from sparse_ft.artifacts.apply_delta import rebuild

    run = tmp_path / "r"
    run_inprocess(run, ["model=tiny_gpt2", "task=e2e", f"task.data_dir={make_e2e(tmp_path / 'e')}", "method=fish",
                        "task.generation.max_new_tokens=4", "task.generation.num_beams=1", "trainer.max_steps=2", "trainer.batch_size=4"])
    out = rebuild(run, tmp_path / "rebuilt")
    assert out.read_bytes() == (run / "checkpoints" / "final" / "model.safetensors").read_bytes()
