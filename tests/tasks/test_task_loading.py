"""Task loading: GLUE TSV / HF paths, split schemes, caps, submissions, synthetic, vision, config checks."""

import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sparse_ft.config.validation import ConfigError
from sparse_ft.tasks import DataError, TaskData, load_task, validate_task_cfg
from sparse_ft.tasks import glue as G
from sparse_ft.tasks import synthetic as S

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf" / "task"
SHARED_GLUE = Path(__file__).resolve().parents[3] / "shared/data/glue"
# the real MRPC files ship with ../shared beside the checkout (CI has it): missing data fails, never skips
needs_mrpc = pytest.mark.usefixtures("glue_dir")


def task_cfg(name, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def write_tsv(path: Path, header, rows, bom=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(map(str, r)) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")


MNLI_COLS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]  # fmt: skip
STSB_COLS = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


def make_glue(root: Path) -> Path:
    """Tiny copies of all nine tasks in the official GLUE layout (BOM, stray quotes)."""
    # CoLA: no header in train/dev (source, label, original label, sentence)
    for f in ("train", "dev"):
        write_tsv(root / f"CoLA/{f}.tsv", None, [["gj04", 1, "", 'He said "hi".'], ["gj04", 0, "*", "Him left."]])
    write_tsv(root / "CoLA/test.tsv", ["index", "sentence"], [[0, "Bill whistled."], [1, "Whistled Bill."]])
    for f in ("train", "dev"):
        write_tsv(root / f"SST-2/{f}.tsv", ["sentence", "label"], [["a fine movie ", 1], ['"bad', 0]])
    write_tsv(root / "SST-2/test.tsv", ["index", "sentence"], [[0, "meh ."]])
    for f in ("train", "dev"):
        write_tsv(root / f"MRPC/{f}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                  [[1, 11, 12, "a b", "b a"], [0, 13, 14, "c", "d"]])  # fmt: skip
    write_tsv(root / "MRPC/test.tsv", ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"], [[0, 1, 2, "x", "y"]])
    for f in ("train", "dev"):
        write_tsv(root / f"QQP/{f}.tsv", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                  [[201, 1, 2, "why?", "why not?", 0], [202, 3, 4, "how?", "how?", 1]])  # fmt: skip
    write_tsv(root / "QQP/test.tsv", ["id", "question1", "question2"], [[0, "q1", "q2"], [1, "q3", "q4"]])
    for f in ("train", "dev"):
        write_tsv(root / f"STS-B/{f}.tsv", STSB_COLS + ["score"],
                  [[0, "main-captions", "MSRvid", "2012test", 1, "none", "none", "A plane.", "An air plane.", 5.000],
                   [1, "main-news", "x", "2012", 2, "none", "none", "b", "c", 0.4]])  # fmt: skip
    write_tsv(root / "STS-B/test.tsv", STSB_COLS,
              [[0, "g", "f", "y", 1, "none", "none", "s1", "s2"], [1, "g", "f", "y", 2, "none", "none", "s3", "s4"],
               [2, "g", "f", "y", 3, "none", "none", "s5", "s6"]])  # fmt: skip
    mnli_row = lambda i, lab, extra: [i, 5, f"{i}e", "fiction", "(p)", "(h)", "(ROOT p)", "(ROOT h)",  # noqa: E731
                                      f"premise {i}", f"hypothesis {i}"] + extra + [lab]  # fmt: skip
    write_tsv(root / "MNLI/train.tsv", MNLI_COLS + ["label1", "gold_label"],
              [mnli_row(0, "neutral", ["neutral"]), mnli_row(1, "contradiction", ["contradiction"])])  # fmt: skip
    dev_cols = MNLI_COLS + ["label1", "label2", "label3", "label4", "label5", "gold_label"]
    for f, base in (("dev_matched", 100), ("dev_mismatched", 200)):
        write_tsv(root / f"MNLI/{f}.tsv", dev_cols, [mnli_row(base + i, "entailment", ["entailment"] * 5)
                                                      for i in range(3)])  # fmt: skip
    write_tsv(root / "MNLI/test_matched.tsv", MNLI_COLS, [mnli_row(300 + i, "", [])[:-1] for i in range(2)])
    write_tsv(root / "MNLI/test_mismatched.tsv", MNLI_COLS, [mnli_row(400 + i, "", [])[:-1] for i in range(3)])
    for f in ("train", "dev"):
        write_tsv(root / f"QNLI/{f}.tsv", ["index", "question", "sentence", "label"],
                  [[0, "who?", "him.", "entailment"], [1, "what?", "no.", "not_entailment"]])  # fmt: skip
    write_tsv(root / "QNLI/test.tsv", ["index", "question", "sentence"], [[0, "q", "s"]])
    for t, labs in (("RTE", ["entailment", "not_entailment"]), ("WNLI", [1, 0])):
        for f in ("train", "dev"):
            write_tsv(root / f"{t}/{f}.tsv", ["index", "sentence1", "sentence2", "label"],
                      [[0, '"Quoted" start', "s2", labs[0]], [1, "p", "h", labs[1]]])  # fmt: skip
        write_tsv(root / f"{t}/test.tsv", ["index", "sentence1", "sentence2"],
                  [[10, "a", "b"], [11, "c", "d"], [12, "e", "f"]])  # fmt: skip
    return root


@pytest.fixture
def glue_dir(tmp_path):
    return make_glue(tmp_path / "glue")


# ------------------------------------------------------------------------------------------ MRPC


@needs_mrpc
def test_real_mrpc_loads_with_bom_and_literal_quotes():
    task = load_task(task_cfg("mrpc", data_dir=str(SHARED_GLUE)), seed=0)
    assert isinstance(task, TaskData)
    assert task.sizes() == {"train": 3668, "validation": 408}  # no test.tsv in the shared copy
    assert task.test_split is None and task.eval_splits == ["validation"]
    first = task.splits["train"][0]
    assert first.label == 1 and first.text_a.startswith("Amrozi accused his brother")
    assert '"the witness"' in first.text_a  # stray quotes kept literally
    # line 15 of train.tsv: the second sentence starts with a double quote
    ex = task.splits["train"][13]
    assert ex.text_b.startswith('"Saddam\'s daughters') and ex.label == 1
    starts = sum(e.text_b.startswith('"') or e.text_a.startswith('"') for e in task.splits["train"])
    assert starts > 100
    assert not any("\ufeff" in e.text_a for e in task.splits["train"][:5])
    assert Counter(e.label for e in task.splits["train"]) == {1: 2474, 0: 1194}
    assert task.label_names == ["not_equivalent", "equivalent"] and task.num_labels == 2
    assert task.main_metric == "acc_and_f1" and task.text_fields == ("sentence1", "sentence2")
    assert task.t5_prefix == "mrpc" and task.has_labels("validation")
    assert task.info["source"] == "tsv" and task.info["split_scheme"] == "glue"
    assert task.info["files"]["train"].endswith("MRPC/train.tsv")
    labels = np.array([e.label for e in task.splits["validation"]])
    assert task.metric_fn(labels, labels)["main"] == 1.0


@needs_mrpc
def test_read_scheme_on_mrpc_halves_dev_with_fixed_seed():
    task = load_task(task_cfg("mrpc", data_dir=str(SHARED_GLUE), split_scheme="read"), seed=0)
    assert task.sizes() == {"train": 3668, "validation": 204, "test": 204}
    assert task.eval_splits == ["validation"] and task.test_split == "test"
    assert task.has_labels("test") and all(e.label is not None for e in task.splits["test"])
    val = {e.guid for e in task.splits["validation"]}
    test = {e.guid for e in task.splits["test"]}
    assert not val & test and len(val | test) == 408
    assert val != {f"validation-{i}" for i in range(204)}  # shuffled, not the first half
    assert task.submission_name is None
    other = load_task(task_cfg("mrpc", data_dir=str(SHARED_GLUE), split_scheme="read"), seed=123)
    assert [e.guid for e in other.splits["test"]] == [e.guid for e in task.splits["test"]]  # run seed irrelevant


@needs_mrpc
def test_caps_take_first_rows_after_split_scheme():
    cfg = task_cfg("mrpc", data_dir=str(SHARED_GLUE), split_scheme="read", max_train_samples=10, max_eval_samples=7)
    task = load_task(cfg, seed=0)
    full = load_task(task_cfg("mrpc", data_dir=str(SHARED_GLUE), split_scheme="read"), seed=0)
    assert task.sizes() == {"train": 10, "validation": 7, "test": 7}
    assert task.splits["train"] == full.splits["train"][:10]
    assert task.splits["test"] == full.splits["test"][:7]
    assert task.info["sizes"] == task.sizes() and task.info["original_sizes"]["validation"] == 408


# -------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("name", list(G.GLUE_TASKS))
def test_every_glue_layout_parses(glue_dir, name):
    task = load_task(task_cfg(name, data_dir=str(glue_dir)), seed=0)
    spec = G.GLUE_TASKS[name]
    assert task.eval_splits == list(spec.eval_splits)
    assert task.test_split == spec.test_splits[0]
    for split in task.eval_splits + ["train"]:
        assert task.has_labels(split)
    assert all(e.label is None for e in task.splits[task.test_split])


def test_layout_details(glue_dir):
    cola = load_task(task_cfg("cola", data_dir=str(glue_dir)), seed=0)
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in cola.splits["train"]] == [
        ("train-0", 'He said "hi".', None, 1),
        ("train-1", "Him left.", None, 0),
    ]
    assert cola.text_fields == ("sentence", None) and cola.main_metric == "matthews_corrcoef"
    mnli = load_task(task_cfg("mnli", data_dir=str(glue_dir)), seed=0)
    assert [e.label for e in mnli.splits["train"]] == [1, 2]  # neutral, contradiction
    ex = mnli.splits["validation_matched"][0]
    assert (ex.guid, ex.text_a, ex.text_b, ex.label) == ("100", "premise 100", "hypothesis 100", 0)
    assert mnli.splits["test_mismatched"][2].guid == "402"
    assert mnli.label_names == ["entailment", "neutral", "contradiction"]
    assert mnli.text_fields == ("premise", "hypothesis") and mnli.test_split == "test_matched"
    stsb = load_task(task_cfg("stsb", data_dir=str(glue_dir)), seed=0)
    assert stsb.problem == "regression" and stsb.num_labels == 1 and stsb.label_names == []
    assert [e.label for e in stsb.splits["train"]] == [5.0, 0.4]
    assert stsb.splits["train"][0].text_b == "An air plane."
    qnli = load_task(task_cfg("qnli", data_dir=str(glue_dir)), seed=0)
    assert [e.label for e in qnli.splits["train"]] == [0, 1] and qnli.text_fields == ("question", "sentence")
    qqp = load_task(task_cfg("qqp", data_dir=str(glue_dir)), seed=0)
    assert qqp.splits["train"][0].guid == "201" and qqp.text_fields == ("question1", "question2")
    wnli = load_task(task_cfg("wnli", data_dir=str(glue_dir)), seed=0)
    assert wnli.label_names == ["not_entailment", "entailment"] and [e.label for e in wnli.splits["train"]] == [1, 0]
    rte = load_task(task_cfg("rte", data_dir=str(glue_dir)), seed=0)
    assert rte.splits["train"][0].text_a == '"Quoted" start' and rte.label_names[0] == "entailment"


def test_mnli_read_scheme(glue_dir):
    task = load_task(task_cfg("mnli", data_dir=str(glue_dir), split_scheme="read"), seed=0)
    assert [e.guid for e in task.splits["validation"]] == ["200", "201", "202"]  # mismatched
    assert [e.guid for e in task.splits["test"]] == ["100", "101", "102"]  # matched
    assert set(task.splits) == {"train", "validation", "test"}


def test_read_scheme_large_train_holds_out_1000(tmp_path):
    rows = [[i, f"q{i}", f"s{i}", "entailment" if i % 2 else "not_entailment"] for i in range(10_050)]
    write_tsv(tmp_path / "QNLI/train.tsv", ["index", "question", "sentence", "label"], rows)
    write_tsv(tmp_path / "QNLI/dev.tsv", ["index", "question", "sentence", "label"], rows[:30])
    task = load_task(task_cfg("qnli", data_dir=str(tmp_path), split_scheme="read"), seed=0)
    assert task.sizes() == {"train": 9050, "validation": 1000, "test": 30}
    train_ids = {e.guid for e in task.splits["train"]}
    assert not train_ids & {e.guid for e in task.splits["validation"]}
    assert [e.guid for e in task.splits["test"]] == [str(i) for i in range(30)]


# --------------------------------------------------------------------------------------- errors


def test_malformed_row_names_file_and_line(tmp_path):
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"],
              [[0, "a", "b", "entailment"], [1, "a b", "entailment"]])  # fmt: skip
    write_tsv(tmp_path / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"]])
    with pytest.raises(DataError) as e:
        load_task(task_cfg("rte", data_dir=str(tmp_path)), seed=0)
    assert f"{tmp_path / 'RTE/train.tsv'}:3" in str(e.value) and "columns" in str(e.value)


def test_unparseable_label_names_file_and_line(tmp_path):
    write_tsv(tmp_path / "CoLA/train.tsv", None, [["s", 1, "", "ok"], ["s", 1, "", "ok"], ["s", "x", "*", "bad"]])
    write_tsv(tmp_path / "CoLA/dev.tsv", None, [["s", 1, "", "ok"]])
    with pytest.raises(DataError, match=r"CoLA/train\.tsv:3: cannot parse label 'x'"):
        load_task(task_cfg("cola", data_dir=str(tmp_path)), seed=0)
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "maybe"]])
    write_tsv(tmp_path / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"]])
    with pytest.raises(DataError, match=r"RTE/train\.tsv:2: unknown label 'maybe'"):
        load_task(task_cfg("rte", data_dir=str(tmp_path)), seed=0)


def test_wrong_header_is_reported(tmp_path):
    write_tsv(tmp_path / "SST-2/train.tsv", ["text", "label"], [["a", 1]])
    write_tsv(tmp_path / "SST-2/dev.tsv", ["sentence", "label"], [["a", 1]])
    with pytest.raises(DataError, match=r"SST-2/train\.tsv:1: header .* lacks column\(s\) \['sentence'\]"):
        load_task(task_cfg("sst2", data_dir=str(tmp_path)), seed=0)


def test_missing_task_folder_or_file_names_the_path(tmp_path):
    with pytest.raises(DataError) as e:
        load_task(task_cfg("rte", data_dir=str(tmp_path)), seed=0)
    msg = str(e.value)
    assert str(tmp_path / "RTE") in msg and "download_glue_data.py" in msg and "nyu-mll/glue" in msg
    write_tsv(tmp_path / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"], [[0, "a", "b", "entailment"]])
    with pytest.raises(DataError, match=str(tmp_path / "RTE" / "dev.tsv")):
        load_task(task_cfg("rte", data_dir=str(tmp_path)), seed=0)


def test_hf_failure_says_how_to_get_the_data(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_task(task_cfg("rte"), seed=0)
    msg = str(e.value)
    assert "task.data_dir" in msg and "nyu-mll/glue" in msg and "OfflineModeIsEnabled" in msg
    assert "load_dataset('nyu-mll/glue', 'rte')" in msg


def test_hf_offline_without_cache_is_a_data_error(tmp_path):
    """The real `datasets` call, offline and with an empty cache (a subprocess so the env applies)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    code = (
        "from omegaconf import OmegaConf\n"
        "from sparse_ft.tasks import load_task, DataError\n"
        f"cfg = OmegaConf.load({str(CONF / 'rte.yaml')!r})\n"
        "try:\n    load_task(cfg, 0)\nexcept DataError as e:\n    print('DATAERROR', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert "DATAERROR" in out.stdout, out.stderr[-2000:]
    assert "task.data_dir" in out.stdout


def test_hf_path_maps_fields_and_unlabeled_test(monkeypatch):
    import datasets

    def fake(path, name):
        assert (path, name) == ("nyu-mll/glue", "mnli")
        part = lambda idx, lab: datasets.Dataset.from_dict(  # noqa: E731
            {"premise": [f"p{i}" for i in idx], "hypothesis": [f"h{i}" for i in idx], "label": lab, "idx": idx}
        )
        return datasets.DatasetDict(
            train=part([0, 1, 2], [0, 1, 2]),
            validation_matched=part([5, 6], [2, 2]),
            validation_mismatched=part([7], [1]),
            test_matched=part([8, 9], [-1, -1]),
            test_mismatched=part([10], [-1]),
        )

    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = load_task(task_cfg("mnli"), seed=0)
    assert task.info["source"] == "huggingface" and task.info["hf_dataset"] == "nyu-mll/glue"
    assert task.splits["train"][1] == G.TextExample("1", "p1", "h1", 1)
    assert task.splits["validation_matched"][0].label == 2
    assert [e.label for e in task.splits["test_matched"]] == [None, None]
    assert task.test_split == "test_matched" and not task.has_labels("test_mismatched")
    assert task.eval_splits == ["validation_matched", "validation_mismatched"]

    def fake_stsb(path, name):
        d = lambda lab: datasets.Dataset.from_dict(  # noqa: E731
            {"sentence1": ["a"], "sentence2": ["b"], "label": lab, "idx": [3]}
        )
        return datasets.DatasetDict(train=d([4.2]), validation=d([1.0]), test=d([-1.0]))

    monkeypatch.setattr(datasets, "load_dataset", fake_stsb)
    task = load_task(task_cfg("stsb"), seed=0)
    assert task.splits["train"][0].label == pytest.approx(4.2) and task.splits["test"][0].label is None


# ---------------------------------------------------------------------------------- submissions


def read_rows(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_submission_files(glue_dir, tmp_path):
    out = tmp_path / "sub"
    rte = load_task(task_cfg("rte", data_dir=str(glue_dir)), seed=0)
    assert rte.submission_name == "RTE.tsv"
    path = G.write_submission(rte, "test", np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), out)
    header, rows = read_rows(path)
    assert path.name == "RTE.tsv" and header == "index\tprediction"
    assert rows == [["10", "entailment"], ["11", "not_entailment"], ["12", "entailment"]]

    stsb = load_task(task_cfg("stsb", data_dir=str(glue_dir)), seed=0)
    _, rows = read_rows(G.write_submission(stsb, "test", np.array([[2.34567], [-0.5], [7.0]]), out))
    assert rows == [["0", "2.346"], ["1", "0.000"], ["2", "5.000"]]

    cola = load_task(task_cfg("cola", data_dir=str(glue_dir)), seed=0)
    _, rows = read_rows(G.write_submission(cola, "test", np.array([1, 0]), out))
    assert rows == [["0", "1"], ["1", "0"]]

    mnli = load_task(task_cfg("mnli", data_dir=str(glue_dir)), seed=0)
    assert mnli.submission_name == "MNLI-m.tsv"
    G.write_submission(mnli, "test_matched", np.array([0, 2]), out)
    G.write_submission(mnli, "test_mismatched", np.array([1, 1, 0]), out)
    _, m = read_rows(out / "MNLI-m.tsv")
    _, mm = read_rows(out / "MNLI-mm.tsv")
    assert m == [["300", "entailment"], ["301", "contradiction"]]
    assert mm == [["400", "neutral"], ["401", "neutral"], ["402", "entailment"]]
    assert sorted(p.name for p in out.iterdir()) == ["CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "RTE.tsv", "STS-B.tsv"]

    with pytest.raises(ValueError):  # wrong length
        G.write_submission(rte, "test", np.array([0, 1]), out)


def test_submission_refused_under_read_scheme(glue_dir, tmp_path):
    task = load_task(task_cfg("rte", data_dir=str(glue_dir), split_scheme="read"), seed=0)
    with pytest.raises(ValueError, match="split_scheme=glue"):
        G.write_submission(task, "test", np.array([0]), tmp_path)


# ------------------------------------------------------------------------------------ synthetic


def test_synthetic_deterministic_balanced_and_independent_of_run_seed():
    a = load_task(task_cfg("synthetic_nli"), seed=0)
    b = load_task(task_cfg("synthetic_nli"), seed=999)
    assert a.sizes() == {"train": 2000, "validation": 500, "test": 500}
    assert a.splits == b.splits
    for split in ("train", "validation", "test"):
        assert Counter(e.label for e in a.splits[split]) == {0: len(a.splits[split]) // 2, 1: len(a.splits[split]) // 2}
    assert a.has_labels("test") and a.test_split == "test" and a.label_names == ["entailment", "not_entailment"]
    assert a.main_metric == "accuracy"
    c = load_task(task_cfg("synthetic_nli", seed_data=7, num_train=101, max_eval_samples=10), seed=0)
    assert c.sizes() == {"train": 101, "validation": 10, "test": 10}
    assert [e.text_a for e in c.splits["train"][:20]] != [e.text_a for e in a.splits["train"][:20]]
    assert abs(sum(e.label for e in c.splits["train"]) - 50) <= 1
    assert a.splits["train"][0].text_a.endswith(" .") and a.splits["train"][0].guid == "train-0"
    # the three splits do not share a generator stream
    assert a.splits["train"][:50] != a.splits["validation"][:50]


def test_synthetic_tsv_round_trip(tmp_path):
    S.write_tsv(tmp_path / "RTE")
    task = load_task(task_cfg("synthetic_nli"), seed=0)
    back = load_task(task_cfg("rte", data_dir=str(tmp_path)), seed=0)
    assert back.splits["train"] == task.splits["train"]
    assert back.splits["validation"] == task.splits["validation"]
    assert [(e.text_a, e.text_b) for e in back.splits["test"]] == [(e.text_a, e.text_b) for e in task.splits["test"]]
    header = (tmp_path / "RTE/train.tsv").read_text().splitlines()[0]
    assert header == "index\tsentence1\tsentence2\tlabel"


# --------------------------------------------------------------------------------------- vision


def test_digits_shapes_splits_determinism_and_pickling():
    task = load_task(task_cfg("digits"), seed=0)
    assert task.modality == "image" and task.image_size == 32 and task.num_labels == 10
    assert task.sizes() == {"train": 1437, "validation": 360} and task.test_split is None
    x, y = task.splits["train"][0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    train_labels = Counter(int(task.splits["train"][i][1]) for i in range(len(task.splits["train"])))
    val_labels = Counter(int(task.splits["validation"][i][1]) for i in range(len(task.splits["validation"])))
    assert all(34 <= val_labels[c] <= 38 for c in range(10))  # stratified 20%
    assert all(train_labels[c] + val_labels[c] >= 170 for c in range(10))
    xs = torch.stack([task.splits["train"][i][0] for i in range(len(task.splits["train"]))])
    assert abs(float(xs.mean())) < 1e-3 and abs(float(xs.std()) - 1) < 1e-2  # normalized with train stats
    again = load_task(task_cfg("digits"), seed=5)
    assert torch.equal(again.splits["validation"][7][0], task.splits["validation"][7][0])
    clone = pickle.loads(pickle.dumps(task.splits["train"]))
    assert torch.equal(clone[3][0], task.splits["train"][3][0])
    capped = load_task(task_cfg("digits", max_train_samples=100, max_eval_samples=50), seed=0)
    assert capped.sizes() == {"train": 100, "validation": 50}
    assert torch.equal(capped.splits["train"][99][0], task.splits["train"][99][0])
    out = task.metric_fn(np.array([1, 2]), np.array([1, 3]))
    assert out["accuracy"] == 0.5 and out["main"] == 0.5


def test_digits_augment_shifts_train_only():
    plain = load_task(task_cfg("digits"), seed=0)
    task = load_task(task_cfg("digits", augment=True), seed=0)
    torch.manual_seed(0)
    draws = [task.splits["train"][0] for _ in range(10)]
    assert all(x.shape == (3, 32, 32) and y == plain.splits["train"][0][1] for x, y in draws)
    assert any(not torch.equal(x, plain.splits["train"][0][0]) for x, _ in draws)
    assert torch.equal(task.splits["validation"][0][0], plain.splits["validation"][0][0])


def test_cifar10_missing_data_error(tmp_path):
    with pytest.raises(DataError) as e:
        load_task(task_cfg("cifar10", root=str(tmp_path)), seed=0)
    msg = str(e.value)
    assert str(tmp_path) in msg and "task.download=true" in msg and "cifar-10-batches-py" in msg


def test_cifar10_transforms():
    from torchvision import transforms as T

    from sparse_ft.tasks.vision import cifar10_transforms

    train = [type(t) for t in cifar10_transforms(True, True).transforms]
    assert train == [T.RandomCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    assert [type(t) for t in cifar10_transforms(False, True).transforms] == [T.ToTensor, T.Normalize]
    assert [type(t) for t in cifar10_transforms(True, False).transforms] == [T.ToTensor, T.Normalize]


# --------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_task_yaml_files_validate_and_document_every_key(path, monkeypatch):
    cfg = OmegaConf.load(path)
    validate_task_cfg(cfg)
    assert cfg.name == path.stem
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "#" in line.split(":", 1)[1], f"{path.name}: key without a help comment: {line}"


def test_all_task_config_files_exist():
    expected = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "cifar10", "synthetic_nli", "digits"}
    assert expected <= {p.stem for p in CONF.glob("*.yaml")}


@pytest.mark.parametrize(
    "name,key,value,bad_key",
    [
        ("rte", "kind", "glu", "task.kind"),
        ("rte", "max_train_samples", 0, "task.max_train_samples"),
        ("rte", "max_train_samples", -5, "task.max_train_samples"),
        ("rte", "max_train_samples", 1.5, "task.max_train_samples"),
        ("rte", "max_train_samples", "100", "task.max_train_samples"),
        ("rte", "max_eval_samples", True, "task.max_eval_samples"),
        ("rte", "split_scheme", "random", "task.split_scheme"),
        ("rte", "data_dir", "/definitely/not/here", "task.data_dir"),
        ("rte", "name", "ax", "task.name"),
        ("rte", "max_length", 0, "task.max_length"),
        ("synthetic_nli", "num_train", 0, "task.num_train"),
        ("synthetic_nli", "seed_data", "x", "task.seed_data"),
        ("cifar10", "download", "yes", "task.download"),
        ("digits", "max_eval_samples", -1, "task.max_eval_samples"),
    ],
)
def test_validate_task_cfg_rejects_bad_values(name, key, value, bad_key):
    cfg = task_cfg(name)
    cfg[key] = value
    with pytest.raises(ConfigError) as e:
        validate_task_cfg(cfg)
    assert e.value.key == bad_key and str(e.value).startswith(bad_key)


def test_validate_accepts_null_caps_and_existing_data_dir(tmp_path):
    validate_task_cfg(task_cfg("rte", data_dir=str(tmp_path), max_train_samples=None, max_eval_samples=3))
    validate_task_cfg(OmegaConf.create({"name": "digits", "kind": "digits"}))
