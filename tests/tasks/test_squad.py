"""SQuAD v1.1 (issue 23, part 2): the official EM/F1 on hand-computed strings, the JSON layout,
doc-stride windows, the span head end to end on tiny_bert, and bad input."""

import json

import numpy as np
import pytest
from conftest import compose, run_inprocess
from squad_fixtures import make_squad

from sparse_ft.config.validation import ConfigError, validate
from sparse_ft.tasks import DataError, load_task
from sparse_ft.tasks.squad import QAExample, SquadMetric, exact_match_score, f1_score, normalize_answer, squad_scores


def test_normalisation_as_the_official_script():
    # lower case, punctuation removed, articles a/an/the removed, white space collapsed
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("An apple, a pear & THE plum.") == "apple pear plum"
    assert normalize_answer("Levi's Stadium") == "levis stadium"  # the apostrophe is punctuation
    assert normalize_answer("theatre another") == "theatre another"  # only whole words are articles
    assert normalize_answer("  \t1,000 \n") == "1000"


def test_exact_match_and_f1_on_hand_computed_strings():
    assert exact_match_score("the Broncos", "Broncos.") == 1.0
    assert exact_match_score("Denver Broncos", "Broncos") == 0.0
    # pred {denver, broncos}, gold {broncos}: P = 1/2, R = 1, F1 = 2/3
    assert f1_score("Denver Broncos", "Broncos") == pytest.approx(2 / 3)
    # pred "in santa clara" (3), gold "levis stadium in santa clara" (5): overlap 3 -> P 1, R 3/5, F1 = 0.75
    assert f1_score("in Santa Clara", "Levi's Stadium in Santa Clara") == pytest.approx(0.75)
    # repeated tokens count with multiplicity: pred [a1 a1 b], gold [a1 b b] -> overlap 2, P = R = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("", "Paris") == 0.0 and f1_score("the", "Paris") == 0.0
    # max over the ground truths, then the mean over questions
    scores = squad_scores({"a": "Denver Broncos", "b": "nowhere"}, {"a": ["Broncos", "Denver Broncos"], "b": ["Paris"]})
    assert scores == {"exact_match": 0.5, "f1": 0.5}


def test_metric_takes_each_examples_best_window():
    ex = {7: QAExample("q7", "where?", "It is in Paris now.", ("Paris",), (9,), 7),
          8: QAExample("q8", "what?", "abc def", ("def",), (4,), 8)}
    # q7 has two windows: the higher score (2.0) covers "Paris"; q8 found no valid span (-1)
    preds = np.array([[0, 5, 1.0], [9, 14, 2.0], [-1, -1, -np.inf]])
    out = SquadMetric(ex)(preds, np.array([7, 7, 8]))
    assert out == {"exact_match": 0.5, "f1": 0.5, "main": 0.5, "invalid_predictions": 1}


def test_official_json_layout_and_caps(tmp_path):
    root = make_squad(tmp_path / "sq")
    task = load_task(compose(["task=squad", f"task.data_dir={root}"]).task, seed=0)
    assert task.sizes() == {"train": 5, "validation": 5} and task.main_metric == "f1"
    ex = task.splits["validation"][1]
    assert ex.guid == "q1" and ex.answers == ("1889",) and ex.context[ex.answer_starts[0]:].startswith("1889")
    uids = [e.uid for s in task.splits.values() for e in s]
    assert len(set(uids)) == len(uids)  # features carry them as labels: unique over the splits
    capped = load_task(compose(["task=squad", f"task.data_dir={root}", "task.max_eval_samples=2"]).task, seed=0)
    assert len(capped.splits["validation"]) == 2
    (root / "dev-v1.1.json").write_text(json.dumps({"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}))
    with pytest.raises(DataError, match="dev-v1.1.json.*layout"):
        load_task(compose(["task=squad", f"task.data_dir={root}"]).task, seed=0)
    with pytest.raises(DataError, match="train-v1.1.json: missing"):
        load_task(compose(["task=squad", f"task.data_dir={tmp_path}"]).task, seed=0)


def test_long_contexts_become_overlapping_windows_with_the_answer_tokens(tmp_path):
    from sparse_ft.models import build_model

    root = make_squad(tmp_path / "sq")
    cfg = compose(["model=tiny_bert", "task=squad", f"task.data_dir={root}", "task.max_length=64", "task.doc_stride=16"])
    task = load_task(cfg.task, seed=0)
    bundle = build_model(cfg.model, task, max_length=64)
    feats = bundle.encode(task, "train")
    tok = bundle.tokenizer
    long_q = [f for f in feats if f["labels"] == task.splits["train"][3].uid]  # "Where was the game played?"
    assert len(long_q) >= 3 and all(len(f["input_ids"]) <= 64 for f in feats)
    hits = [f for f in long_q if f["start_positions"] > 0]
    assert hits, "the answer lies wholly in some window"
    for f in hits:
        span = tok.decode(f["input_ids"][f["start_positions"]: f["end_positions"] + 1])
        assert span.replace(" ", "").lower() == "levi'sstadium"
    assert any(f["start_positions"] == 0 for f in long_q)  # windows without the answer point at [CLS]
    # consecutive windows overlap by doc_stride context tokens
    ctx = [[t for t, o in zip(f["input_ids"], f["offsets"]) if o[0] >= 0] for f in long_q]
    assert ctx[0][-16:] == ctx[1][:16]


def test_best_span_is_the_highest_valid_start_plus_end():
    import torch

    from sparse_ft.models.qa import best_spans

    start = torch.tensor([[9.0, 1.0, 0.0, 3.0, 0.0]])
    end = torch.tensor([[9.0, 0.0, 5.0, 0.0, 4.0]])
    offsets = torch.tensor([[[-1, -1], [0, 2], [3, 5], [6, 8], [9, 11]]])  # token 0 is [CLS], not context
    # valid pairs (s <= e, length <= 2): best is s=3 (3.0) + e=4 (4.0) = 7 (s=1,e=2: 6; s=3,e=3: 3)
    out = best_spans(start, end, offsets, max_answer_length=2)
    assert out.tolist() == [[6.0, 11.0, 7.0]]
    # single tokens only (s = e): 1+0, 0+5, 3+0, 0+4 -> token 2, chars 3..5, score 5; [CLS] (9+9) never counts
    assert best_spans(start, end, offsets, max_answer_length=1).tolist() == [[3.0, 5.0, 5.0]]
    # no context token at all: no span
    none = best_spans(start, end, torch.full((1, 5, 2), -1), max_answer_length=2)
    assert none[0, :2].tolist() == [-1.0, -1.0] and none[0, 2] == float("-inf")


def test_squad_runs_end_to_end_on_tiny_bert(tmp_path):
    root = make_squad(tmp_path / "sq")
    s = run_inprocess(tmp_path / "r", ["model=tiny_bert", "task=squad", f"task.data_dir={root}", "task.max_length=64",
                                       "task.doc_stride=16", "trainer.max_steps=2", "trainer.batch_size=4", "method=omp"])
    m = s["metrics"]["validation"]
    assert s["status"] == "completed" and set(m) == {"exact_match", "f1", "main", "invalid_predictions"}
    assert m["main"] == m["f1"] and 0 <= m["exact_match"] <= m["f1"] <= 1
    assert (tmp_path / "r" / "checkpoints" / "final" / "model.safetensors").is_file()


def test_max_length_below_the_question_fails_naming_the_key(tmp_path):
    from sparse_ft.models import build_model

    root = make_squad(tmp_path / "sq")
    cfg = compose(["model=tiny_bert", "task=squad", f"task.data_dir={root}", "task.max_length=8", "task.doc_stride=2"])
    task = load_task(cfg.task, seed=0)
    with pytest.raises(ConfigError, match="task.max_length.*longest question"):
        build_model(cfg.model, task, max_length=8)
    with pytest.raises(ConfigError, match="task.doc_stride"):
        validate(compose(["model=tiny_bert", "task=squad", "task.max_length=64", "task.doc_stride=64"]))


@pytest.mark.parametrize("model", ["tiny_t5", "tiny_opt", "tiny_vit"])
def test_squad_needs_an_encoder(model):
    with pytest.raises(ConfigError, match="model"):
        validate(compose([f"model={model}", "task=squad"]))


@pytest.mark.parametrize("method", ["prompt_tuning", "read", "lst"])
def test_classification_head_methods_fail_on_squad(method):
    with pytest.raises(ConfigError, match=f"method.name.*method={method} cannot run task=squad"):
        validate(compose(["model=tiny_bert", "task=squad", f"method={method}"]))


def test_datasets_layout_gives_the_same_examples_as_the_json(tmp_path):
    """task.data_dir=null reads `datasets` (rajpurkar/squad's columns; here a local copy of them)."""
    from squad_fixtures import squad_doc

    rows = [{"id": qa["id"], "title": art["title"], "context": p["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for art in squad_doc()["data"] for p in art["paragraphs"] for qa in p["qas"]]
    hf = tmp_path / "squad_hf"
    hf.mkdir()
    for split in ("train", "validation"):
        (hf / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from_hf = load_task(compose(["task=squad", f"task.hf_dataset={hf}"]).task, seed=0)
    from_json = load_task(compose(["task=squad", f"task.data_dir={make_squad(tmp_path / 'sq')}"]).task, seed=0)
    for split in ("train", "validation"):
        assert [(e.guid, e.question, e.context, e.answers, e.answer_starts) for e in from_hf.splits[split]] == \
               [(e.guid, e.question, e.context, e.answers, e.answer_starts) for e in from_json.splits[split]]
    with pytest.raises(DataError, match=f"task.hf_dataset={tmp_path / 'nothing'}"):
        load_task(compose(["task=squad", f"task.hf_dataset={tmp_path / 'nothing'}"]).task, seed=0)


def test_fish_sparse_delta_on_the_span_head_rebuilds_the_final_checkpoint(tmp_path):
    from sparse_ft.artifacts.apply_delta import rebuild

    run = tmp_path / "r"
    run_inprocess(run, ["model=tiny_bert", "task=squad", f"task.data_dir={make_squad(tmp_path / 'sq')}", "task.max_length=64",
                        "task.doc_stride=16", "method=fish", "trainer.max_steps=2", "trainer.batch_size=4"])
    out = rebuild(run, tmp_path / "rebuilt")
    assert out.read_bytes() == (run / "checkpoints" / "final" / "model.safetensors").read_bytes()
