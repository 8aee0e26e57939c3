"""SQuAD v1.1 (Rajpurkar et al. 2016): extractive question answering, scored with exact match
and F1 as the official v1.1 evaluation script computes them.

Data: the official JSON files from ``task.data_dir`` (``train-v1.1.json``, ``dev-v1.1.json``:
``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}``), or, with ``task.data_dir=null``, the Hugging Face dataset
``task.hf_dataset`` (``rajpurkar/squad``: columns id, title, context, question, answers).
Splits: ``train`` and ``validation`` = the official dev set (the test set is hidden), as the
papers report. Caps keep the first n questions after a shuffle with the fixed seed 0.

Metric (``SquadMetric``): each example's answer is the best-scoring span over its features (a
long context is cut into windows of ``task.max_length`` tokens overlapping by ``task.doc_stride``;
see models/qa.py); the predicted text is compared with every ground-truth answer after the
official normalisation (lower case, punctuation removed, the articles a/an/the removed, white
space collapsed): ``exact_match`` = normalised strings equal, ``f1`` = token-overlap F1, each the
maximum over the ground truths, averaged over the questions. Reported as fractions in [0, 1] (the
official script prints 100×). ``main`` = ``f1``.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import CAP_SEED, DataError, TaskData, UidExample, cap_shuffled, hf_split

FILES = {"train": "train-v1.1.json", "validation": "dev-v1.1.json"}


@dataclass(frozen=True)
class QAExample(UidExample):
    gold, texts = "answers", ("question", "context")  # class attributes, not fields

    guid: str  # the question's id in the official files
    question: str
    context: str
    answers: tuple[str, ...]  # every ground-truth answer text (dev has several)
    answer_starts: tuple[int, ...]  # their character offsets in the context
    uid: int  # unique over all splits: features carry it as their label


# --- the official v1.1 metric, written from its definition ---------------------------------------

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, the articles a/an/the and extra white space (official v1.1)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1_score(prediction: str, ground_truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_scores(predictions: dict[str, str], answers: dict[str, list[str]]) -> dict:
    """Mean over the questions of the max over ground truths (fractions; the script prints 100×)."""
    if not answers:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        em += max(exact_match_score(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    return {"exact_match": em / len(answers), "f1": f1 / len(answers)}


class SquadMetric:
    """``(predictions (n_features, 3): start_char, end_char, score; labels: example uid) -> dict``.

    Picks, per example, the span of its best-scoring feature and scores the text it covers."""

    main_metric = "f1"

    def __init__(self, examples: dict[int, QAExample]):
        self.examples = examples

    def __call__(self, predictions, labels) -> dict:
        p = np.asarray(predictions, dtype=np.float64).reshape(len(labels), -1)
        best: dict[int, tuple[float, int, int]] = {}
        for (start, end, score), uid in zip(p[:, :3], np.asarray(labels).astype(np.int64)):
            uid = int(uid)
            if uid not in best or score > best[uid][0]:
                best[uid] = (score, int(start), int(end))
        texts, golds, invalid = {}, {}, 0
        for uid, (score, start, end) in best.items():
            ex = self.examples[uid]
            if start < 0:  # no valid span in any window
                invalid += 1
            texts[ex.guid] = ex.context[start:end] if start >= 0 else ""
            golds[ex.guid] = list(ex.answers)
        out = squad_scores(texts, golds)
        return {**out, "main": out["f1"], "invalid_predictions": invalid}


# --- loading --------------------------------------------------------------------------------------


def _read_json(path: Path, split: str, start_uid: int) -> list[QAExample]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable SQuAD JSON file ({type(err).__name__}: {err})") from err
    out = []
    try:
        for article in doc["data"]:
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    answers = qa.get("answers") or []
                    out.append(QAExample(str(qa["id"]), qa["question"], context, tuple(a["text"] for a in answers),
                                         tuple(int(a["answer_start"]) for a in answers), start_uid + len(out)))
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: not the SQuAD v1.1 layout (data[].paragraphs[].qas[] with id, question, answers; "
                        f"missing {err})") from err
    return out


def _from_hf(task_cfg, split: str, start_uid: int) -> list[QAExample]:
    return hf_split(task_cfg.get("hf_dataset"), split, f"set task.data_dir to a folder with {', '.join(FILES.values())} "
                    "(https://rajpurkar.github.io/SQuAD-explorer/)",
                    lambda ds: [QAExample(str(r["id"]), r["question"], r["context"], tuple(r["answers"]["text"]),
                                          tuple(int(s) for s in r["answers"]["answer_start"]), start_uid + i) for i, r in enumerate(ds)])


def load_squad(task_cfg, seed: int | None = None) -> TaskData:
    data_dir = task_cfg.get("data_dir")
    splits, files, uid = {}, {}, 0
    for split, fname in FILES.items():
        if data_dir is not None:
            path = Path(str(data_dir)) / fname
            if not path.is_file():
                raise DataError(f"{path}: missing; task.data_dir={data_dir} should hold the official {', '.join(FILES.values())} "
                                "(https://rajpurkar.github.io/SQuAD-explorer/), or set task.data_dir=null to use task.hf_dataset")
            splits[split] = _read_json(path, split, uid)
            files[split] = str(path)
        else:
            splits[split] = _from_hf(task_cfg, split, uid)
        uid += len(splits[split])
    original = {k: len(v) for k, v in splits.items()}
    splits["train"] = cap_shuffled(splits["train"], task_cfg.get("max_train_samples"))
    splits["validation"] = cap_shuffled(splits["validation"], task_cfg.get("max_eval_samples"))
    metric = SquadMetric({ex.uid: ex for exs in splits.values() for ex in exs})
    info = {
        "source": "json" if data_dir is not None else "huggingface",
        "files": files,
        "hf_dataset": task_cfg.get("hf_dataset"),
        "split_scheme": "train = SQuAD v1.1 train; validation = the official dev set (the test set is hidden)",
        "original_sizes": original,
        "max_train_samples": task_cfg.get("max_train_samples"),
        "max_eval_samples": task_cfg.get("max_eval_samples"),
        "cap_rule": f"first n questions after a shuffle with fixed seed {CAP_SEED}",
        "doc_stride": int(task_cfg.get("doc_stride", 128)),
        "max_answer_length": int(task_cfg.get("max_answer_length", 30)),
    }
    return TaskData(
        name=str(task_cfg.get("name", "squad")),
        modality="text",
        problem="extractive_qa",
        label_names=[],
        splits=splits,
        train_split="train",
        eval_splits=["validation"],
        test_split=None,
        main_metric="f1",
        metric_fn=metric,
        info=info,
    )
