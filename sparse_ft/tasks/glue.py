"""GLUE: the nine tasks, read from the official TSV layout or from Hugging Face ``datasets``.

Loading order (never substitutes data):

1. ``task.data_dir`` set: ``<data_dir>/<Folder>/{train,dev,test}.tsv`` in the official GLUE layout
   (``download_glue_data.py``). A missing train/dev file is a :class:`DataError` naming the path;
   the unlabeled ``test.tsv`` is optional.
2. ``task.data_dir`` null: ``datasets.load_dataset(task.hf_dataset, task.hf_config)`` (hub or the
   local cache). If that fails, a :class:`DataError` says how to get the data.

The files are read by `glue_read.py` (its docstring says how strictly). A split a job needs that
ends up empty (a header-only file) is a :class:`DataError` naming the file before the model loads
(``tasks.check_splits``).

Split schemes (``task.split_scheme``):

* ``glue``: ``train``, ``validation`` (dev), ``test`` (the unlabeled GLUE test set, when present;
  labels ``None``). MNLI: ``validation_matched``/``validation_mismatched`` (both evaluated) and
  ``test_matched``/``test_mismatched`` (``test_split="test_matched"``).
* ``read`` (the READ paper's protocol, labeled test): with fewer than 10k training rows the dev set is
  shuffled with the fixed seed 0 (independent of the run seed) and split in half, first half
  ``validation``, second half ``test``; otherwise dev becomes ``test`` and 1,000 training rows
  (fixed seed 0) become ``validation``. MNLI: ``validation_mismatched`` -> ``validation``,
  ``validation_matched`` -> ``test``. The GLUE test files are not used.

``max_train_samples`` / ``max_eval_samples`` keep the first n rows of the train split / of every
other split, applied after the split scheme.

Here: the nine tasks' table (files, columns, label words, submission names), the split schemes,
``load_glue`` and the GLUE-server submission files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.io import atomic_write_text
from .base import DataError, TaskData, TextExample
from .glue_read import GlueSpec, Layout, load_glue_hf, load_glue_tsv
from .metrics import glue_metric

logger = logging.getLogger(__name__)

READ_SMALL_TRAIN = 10_000  # below this many training rows, READ splits dev in half
READ_HELDOUT = 1_000  # otherwise this many training rows become the validation split
READ_SEED = 0  # fixed: the READ splits do not depend on the run seed

_PAIR = Layout("sentence1", "sentence2", "label", "index")
_PAIR_TEST = Layout("sentence1", "sentence2", None, "index")
_PAIR_TEXT = ("sentence1", "sentence2")
_ENTAILMENT = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueSpec] = {
    s.name: s
    for s in [
        # CoLA's train/dev files have no header: source, label, original label, sentence
        GlueSpec("cola", "CoLA", ("unacceptable", "acceptable"), "int", ("sentence", None),
                 Layout(3, None, 1, None, header=False, num_columns=4), Layout("sentence", None, None, "index")),
        GlueSpec("sst2", "SST-2", ("negative", "positive"), "int", ("sentence", None),
                 Layout("sentence", None, "label", None), Layout("sentence", None, None, "index")),
        GlueSpec("mrpc", "MRPC", ("not_equivalent", "equivalent"), "int", _PAIR_TEXT,
                 Layout("#1 String", "#2 String", "Quality", None), Layout("#1 String", "#2 String", None, "index")),
        GlueSpec("qqp", "QQP", ("not_duplicate", "duplicate"), "int", ("question1", "question2"),
                 Layout("question1", "question2", "is_duplicate", "id"), Layout("question1", "question2", None, "id")),
        GlueSpec("stsb", "STS-B", (), "float", _PAIR_TEXT, Layout("sentence1", "sentence2", "score", "index"), _PAIR_TEST),
        # text_a = premise (sentence1), text_b = hypothesis (sentence2)
        GlueSpec("mnli", "MNLI", ("entailment", "neutral", "contradiction"), "name", ("premise", "hypothesis"),
                 Layout("sentence1", "sentence2", "gold_label", "index"), _PAIR_TEST,
                 files=(("train", "train.tsv"), ("validation_matched", "dev_matched.tsv"),
                        ("validation_mismatched", "dev_mismatched.tsv"), ("test_matched", "test_matched.tsv"),
                        ("test_mismatched", "test_mismatched.tsv")),
                 eval_splits=("validation_matched", "validation_mismatched"), test_splits=("test_matched", "test_mismatched"),
                 submission=(("test_matched", "MNLI-m.tsv"), ("test_mismatched", "MNLI-mm.tsv"))),
        GlueSpec("qnli", "QNLI", _ENTAILMENT, "name", ("question", "sentence"),
                 Layout("question", "sentence", "label", "index"), Layout("question", "sentence", None, "index")),
        GlueSpec("rte", "RTE", _ENTAILMENT, "name", _PAIR_TEXT, _PAIR, _PAIR_TEST),
        GlueSpec("wnli", "WNLI", ("not_entailment", "entailment"), "int", _PAIR_TEXT, _PAIR, _PAIR_TEST),
    ]
}


def get_spec(name: str) -> GlueSpec:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise DataError(f"task.name: unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}") from None


# --------------------------------------------------------------------------------------------
# split schemes


def _permutation(n: int) -> np.ndarray:
    return np.random.default_rng(READ_SEED).permutation(n)


def apply_read_scheme(spec: GlueSpec, splits: dict[str, list[TextExample]]) -> tuple[dict, dict]:
    """The READ paper's splits (labeled test); see the module docstring."""
    train = splits["train"]
    if spec.name == "mnli":
        out = {
            "train": train,
            "validation": splits["validation_mismatched"],
            "test": splits["validation_matched"],
        }
        rule = "validation_mismatched -> validation, validation_matched -> test"
    elif len(train) < READ_SMALL_TRAIN:
        dev = splits["validation"]
        perm = _permutation(len(dev))
        half = len(dev) // 2
        out = {
            "train": train,
            "validation": [dev[i] for i in perm[:half]],
            "test": [dev[i] for i in perm[half:]],
        }
        rule = f"train < {READ_SMALL_TRAIN}: dev shuffled (seed {READ_SEED}) and halved -> validation / test"
    else:
        perm = _permutation(len(train))
        held = set(perm[:READ_HELDOUT].tolist())
        out = {
            "train": [e for i, e in enumerate(train) if i not in held],
            "validation": [train[i] for i in perm[:READ_HELDOUT]],
            "test": splits["validation"],
        }
        rule = f"dev -> test; {READ_HELDOUT} train rows (seed {READ_SEED}) -> validation"
    return out, {"read_rule": rule}


def _cap(examples: Sequence, n: int | None) -> Sequence:
    return examples if n is None else examples[:n]


def load_glue(task_cfg, seed: int | None = None) -> TaskData:
    """Build the TaskData of a GLUE task from its config (see conf/task/<name>.yaml)."""
    spec = get_spec(str(task_cfg.get("name")))
    data_dir = task_cfg.get("data_dir")
    scheme = task_cfg.get("split_scheme") or "glue"
    if data_dir:
        splits, info = load_glue_tsv(spec, data_dir, with_test=scheme == "glue")
    else:
        hf_dataset = task_cfg.get("hf_dataset") or "nyu-mll/glue"
        hf_config = task_cfg.get("hf_config") or spec.name
        splits, info = load_glue_hf(spec, hf_dataset, hf_config)
    info["split_scheme"] = scheme
    info["original_sizes"] = {k: len(v) for k, v in splits.items()}

    if scheme == "read":
        splits, extra = apply_read_scheme(spec, splits)
        info.update(extra)
        eval_splits, test_split = ["validation"], "test"
    elif scheme == "glue":
        eval_splits = list(spec.eval_splits)
        test_split = spec.test_splits[0] if spec.test_splits[0] in splits else None
    else:
        raise DataError(f"task.split_scheme: unknown scheme {scheme!r}; expected glue or read")

    max_train, max_eval = task_cfg.get("max_train_samples"), task_cfg.get("max_eval_samples")
    splits = {k: list(_cap(v, max_train if k == "train" else max_eval)) for k, v in splits.items()}
    info["max_train_samples"], info["max_eval_samples"] = max_train, max_eval
    info["sizes"] = {k: len(v) for k, v in splits.items()}

    metric = glue_metric(spec.name)
    submission = dict(spec.submission).get(test_split) if scheme == "glue" and test_split else None
    return TaskData(
        name=spec.name,
        modality="text",
        problem=spec.problem,
        label_names=list(spec.label_names),
        splits=splits,
        train_split="train",
        eval_splits=eval_splits,
        test_split=test_split,
        main_metric=metric.main_metric,
        metric_fn=metric,
        t5_prefix=spec.t5_prefix,
        text_fields=spec.text_fields,
        submission_name=submission,
        info=info,
    )


# --------------------------------------------------------------------------------------------
# GLUE server submissions


def submission_filename(task: TaskData, split: str) -> str:
    """The GLUE-server file name for predictions on ``split`` of ``task``."""
    if task.name not in GLUE_TASKS:
        raise ValueError(f"{task.name!r} is not a GLUE task; no submission file")
    if task.info.get("split_scheme", "glue") != "glue":
        raise ValueError(
            f"GLUE submissions need task.split_scheme=glue (the official test set); this run used "
            f"{task.info.get('split_scheme')!r}, whose test split is carved from labeled data"
        )
    names = dict(GLUE_TASKS[task.name].submission)
    if split not in names:
        raise ValueError(f"{task.name}: no GLUE submission for split {split!r}; expected one of {list(names)}")
    return names[split]


def write_submission(task: TaskData, split: str, predictions: np.ndarray, path_dir) -> Path:
    """Write ``<path_dir>/<Task>.tsv`` for the GLUE server (header ``index\\tprediction``).

    ``predictions``: class ids ``(n,)`` or scores ``(n, classes)`` (argmax) for classification;
    ``(n,)``/``(n, 1)`` values for STS-B (clipped to [0, 5], 3 decimals). RTE/QNLI/MNLI write
    label names, the other classification tasks class ids. ``index`` is each row's test-file id.
    """
    spec = GLUE_TASKS.get(task.name)
    fname = submission_filename(task, split)
    examples = task.splits[split]
    preds = np.asarray(predictions)
    if spec.problem == "regression":
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or len(preds) != len(examples):
        raise ValueError(f"{task.name}/{split}: got predictions of shape {preds.shape} for {len(examples)} rows")
    original = task.info.get("original_sizes", {}).get(split)
    if original is not None and original != len(examples):
        logger.warning(
            "%s: split %s was capped to %d of %d rows (task.max_eval_samples); the submission is incomplete",
            task.name,
            split,
            len(examples),
            original,
        )
    # a text-to-text model's output that is no label word (-1) / no number (NaN): the server
    # needs a value on every row, so it gets class 0 / 0.0, and the count is logged
    as_float = preds.astype(np.float64)
    invalid = ~np.isfinite(as_float) if spec.problem == "regression" else ~(np.isfinite(as_float) & (as_float >= 0))
    if invalid.any():
        logger.warning("%s/%s: %d of %d predictions are no valid %s; written as %s", task.name, split, int(invalid.sum()),
                       len(preds), "number" if spec.problem == "regression" else "label",
                       "0.000" if spec.problem == "regression" else spec.label_names[0])
    rows = ["index\tprediction"]
    for ex, p, bad in zip(examples, preds, invalid):
        if spec.problem == "regression":
            value = f"{min(max(0.0 if bad else float(p), 0.0), 5.0):.3f}"
        else:
            k = 0 if bad else int(p)
            if not 0 <= k < len(spec.label_names):
                raise ValueError(f"{task.name}: predicted class {k} out of range")
            value = spec.label_names[k] if spec.label_format == "name" else str(k)
        rows.append(f"{ex.guid}\t{value}")
    path = Path(path_dir) / fname
    atomic_write_text(path, "\n".join(rows) + "\n")
    logger.info("wrote GLUE submission %s (%d rows)", path, len(examples))
    return path
