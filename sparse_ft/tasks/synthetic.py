"""synthetic_nli: a deterministic, GLUE-format, two-class sentence-pair task for offline work.

Each premise follows one template, e.g. ``the tall farmer in the village painted the old fence .``
The hypothesis of an ``entailment`` pair is a shortened version that keeps subject, verb and object
(``the farmer painted the fence .``). A ``not_entailment`` hypothesis uses the same short templates
but either negates the verb (``the farmer did not paint the fence .``), swaps the subject for one
from a disjoint vocabulary (``the king painted the fence .``) or swaps the verb for one from a
disjoint vocabulary (``the farmer sold the fence .``). The signal is lexical and clear, so a small
pretrained BERT learns it well above chance within one epoch. Classes are exactly balanced
(±1 for odd sizes). Only plain English words that are whole tokens in BERT's vocabulary are used.

The data depends only on ``task.seed_data`` (default 1234) and the split sizes — never on the run
seed. Label names follow RTE (``entailment``, ``not_entailment``), and :func:`write_tsv` writes the
RTE layout so the GLUE TSV reader reads it back unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .base import TaskData, TextExample
from .metrics import TaskMetric

logger = logging.getLogger(__name__)

LABEL_NAMES = ["entailment", "not_entailment"]
SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = {"train": 2000, "validation": 500, "test": 500}
DEFAULT_SEED = 1234

SUBJECTS = [
    "farmer", "teacher", "doctor", "soldier", "student", "artist",
    "driver", "writer", "baker", "sailor", "nurse", "pilot",
]  # fmt: skip
OTHER_SUBJECTS = ["king", "queen", "child", "priest", "lawyer", "singer", "hunter", "judge"]
# (past, base) forms
VERBS = [
    ("painted", "paint"), ("cleaned", "clean"), ("visited", "visit"), ("watched", "watch"),
    ("opened", "open"), ("closed", "close"), ("fixed", "fix"), ("moved", "move"),
    ("washed", "wash"), ("carried", "carry"),
]  # fmt: skip
OTHER_VERBS = [
    ("sold", "sell"), ("burned", "burn"), ("broke", "break"), ("stole", "steal"),
    ("bought", "buy"), ("lost", "lose"), ("found", "find"), ("hid", "hide"),
]  # fmt: skip
ADJECTIVES = ["tall", "young", "old", "quiet", "happy", "tired", "brave", "small"]
PLACES = ["village", "city", "town", "house", "school", "park", "garden", "market"]
OBJECTS = ["fence", "door", "wall", "car", "window", "boat", "table", "box", "gate", "bridge"]
OBJECT_ADJECTIVES = ["red", "blue", "green", "new", "large", "wooden", "broken", "white"]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _pair(rng: np.random.Generator, label: int) -> tuple[str, str]:
    subj, (verb, base), obj = _pick(rng, SUBJECTS), _pick(rng, VERBS), _pick(rng, OBJECTS)
    adj, place, oadj = _pick(rng, ADJECTIVES), _pick(rng, PLACES), _pick(rng, OBJECT_ADJECTIVES)
    premise = f"the {adj} {subj} in the {place} {verb} the {oadj} {obj} ."
    if label == 1:  # not_entailment: negate, or swap subject / verb from a disjoint vocabulary
        kind = int(rng.integers(3))
        if kind == 0:
            verb = f"did not {base}"
        elif kind == 1:
            subj, adj = _pick(rng, OTHER_SUBJECTS), _pick(rng, ADJECTIVES)
        else:
            verb = _pick(rng, OTHER_VERBS)[0]
    short = int(rng.integers(4))
    if short == 0:
        hypothesis = f"the {subj} {verb} the {obj} ."
    elif short == 1:
        hypothesis = f"the {adj} {subj} {verb} the {obj} ."
    elif short == 2:
        hypothesis = f"the {subj} {verb} the {oadj} {obj} ."
    else:
        hypothesis = f"a {subj} in the {place} {verb} a {obj} ."
    return premise, hypothesis


def generate_split(split: str, n: int, seed_data: int = DEFAULT_SEED) -> list[TextExample]:
    """``n`` examples of one split; depends only on (seed_data, split, n). Exactly balanced."""
    rng = np.random.default_rng([int(seed_data), SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % 2)
    out = []
    for i, label in enumerate(labels.tolist()):
        a, b = _pair(rng, label)
        out.append(TextExample(f"{split}-{i}", a, b, label))
    return out


def generate(
    num_train: int = 2000, num_validation: int = 500, num_test: int = 500, seed_data: int = DEFAULT_SEED
) -> dict[str, list[TextExample]]:
    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    return {split: generate_split(split, int(n), seed_data) for split, n in sizes.items()}


def _sizes(task_cfg) -> dict:
    get = task_cfg.get if task_cfg is not None else (lambda k, d=None: d)
    return {
        "num_train": int(get("num_train", DEFAULT_SIZES["train"])),
        "num_validation": int(get("num_validation", DEFAULT_SIZES["validation"])),
        "num_test": int(get("num_test", DEFAULT_SIZES["test"])),
        "seed_data": int(get("seed_data", DEFAULT_SEED)),
    }


def write_tsv(out_dir: str | os.PathLike, task_cfg=None, *, with_test: bool = True) -> Path:
    """Write the data in GLUE RTE layout: ``train.tsv``/``dev.tsv`` (``index sentence1 sentence2
    label``, label names) and, with ``with_test``, ``test.tsv`` without labels (the GLUE test layout).

    Sizes and ``seed_data`` come from ``task_cfg`` (defaults when None). Point
    ``task.data_dir`` at the parent of ``out_dir`` named ``RTE`` to read it as GLUE RTE.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = generate(**_sizes(task_cfg))
    for split, fname in (("train", "train.tsv"), ("validation", "dev.tsv"), ("test", "test.tsv")):
        if split == "test" and not with_test:
            continue
        labeled = split != "test"
        header = "index\tsentence1\tsentence2" + ("\tlabel" if labeled else "")
        rows = [header]
        for e in data[split]:
            row = f"{e.guid}\t{e.text_a}\t{e.text_b}"
            rows.append(row + (f"\t{LABEL_NAMES[e.label]}" if labeled else ""))
        (out / fname).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def load_synthetic_nli(task_cfg, seed: int | None = None) -> TaskData:
    """TaskData of synthetic_nli (``seed`` — the run seed — is deliberately unused)."""
    params = _sizes(task_cfg)
    splits = generate(**params)
    max_train, max_eval = task_cfg.get("max_train_samples"), task_cfg.get("max_eval_samples")
    original = {k: len(v) for k, v in splits.items()}
    splits = {k: v[: (max_train if k == "train" else max_eval)] for k, v in splits.items()}
    metric = TaskMetric("accuracy")
    info = {
        "source": f"generated (synthetic_nli, seed_data={params['seed_data']})",
        "split_scheme": "synthetic (train / validation / labeled test)",
        "original_sizes": original,
        "max_train_samples": max_train,
        "max_eval_samples": max_eval,
        "sizes": {k: len(v) for k, v in splits.items()},
    }
    return TaskData(
        name=str(task_cfg.get("name", "synthetic_nli")),
        modality="text",
        problem="classification",
        label_names=list(LABEL_NAMES),
        splits=splits,
        train_split="train",
        eval_splits=["validation"],
        test_split="test",
        main_metric=metric.main_metric,
        metric_fn=metric,
        t5_prefix="rte",  # same format and label words as T5's RTE task
        text_fields=("sentence1", "sentence2"),
        info=info,
    )
