"""What every task hands to the rest of the run.

A task owns loading, its splits, its label space, its metric and which metric selects the best
checkpoint. It knows nothing about models: text tasks give raw `TextExample`s and the model
bundle tokenises them (encoder, decoder-only and text-to-text models need different inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


CAP_SEED = 0  # `cap_shuffled`'s fixed seed: caps never depend on the run seed


class DataError(RuntimeError):
    """Task data missing or malformed. The message names the file or key and how to fix it."""


def cap_shuffled(items: list, n: int | None) -> list:
    """The first n items after a shuffle with the fixed seed `CAP_SEED`, kept in their order; all
    of them when n is None or not smaller than their number."""
    if n is None or n >= len(items):
        return items
    return [items[i] for i in sorted(np.random.default_rng(CAP_SEED).permutation(len(items))[:n])]


def hf_split(name: str, split: str, remedy: str, convert: Callable = lambda ds: ds):
    """`convert(datasets.load_dataset(name, split=split))`; a failure is a `DataError` naming
    `task.hf_dataset` and the split, then `remedy` (how to use local files instead)."""
    try:
        from datasets import load_dataset

        return convert(load_dataset(name, split=split))
    except Exception as err:
        raise DataError(f"task.hf_dataset={name}: split {split!r} could not be loaded ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); {remedy}") from err


@dataclass(frozen=True)
class TextExample:
    guid: str  # the row's id in its source (GLUE `index`/`idx`, or `<split>-<n>`)
    text_a: str
    text_b: str | None
    label: int | float | None  # None where the split has no labels (GLUE test)


class UidExample:
    """An example whose features carry its unique `uid` as their label (the task's metric looks
    the example up by it); it has no label without gold texts. A subclass names its gold-text
    field (`gold`) and its two text fields (`texts`, the second may be None)."""

    gold: str
    texts: tuple[str, str | None]

    @property
    def label(self):
        return self.uid if getattr(self, self.gold) else None

    @property
    def text_a(self) -> str:
        return getattr(self, self.texts[0])

    @property
    def text_b(self):
        return getattr(self, self.texts[1]) if self.texts[1] else None


MetricFn = Callable[[np.ndarray, np.ndarray], dict]


@dataclass
class TaskData:
    name: str  # config name, e.g. "mrpc"
    modality: str  # "text" | "image"
    problem: str  # "classification" | "regression"
    label_names: list[str]  # class names in label-id order ([] for regression)
    splits: dict[str, Sequence]  # text: list[TextExample]; image: Dataset of (tensor, int)
    train_split: str  # usually "train"
    eval_splits: list[str]  # evaluated at every evaluation; eval_splits[0] selects the best
    test_split: str | None  # held-out split evaluated once at the end (may be unlabeled)
    main_metric: str  # the metric-dict key `main` copies
    metric_fn: MetricFn  # (predictions, labels) -> {"accuracy": .., ..., "main": ..}
    # text-to-text (T5) rendering: "<t5_prefix> <field_a>: <text_a> <field_b>: <text_b>"
    t5_prefix: str = ""
    text_fields: tuple[str, str | None] = ("sentence1", "sentence2")
    # GLUE-server submission: file name and how a prediction is written
    submission_name: str | None = None
    image_size: int | None = None  # image tasks: side length of the (square) input
    info: dict = field(default_factory=dict)  # sources, split scheme, anything for the log

    @property
    def num_labels(self) -> int:
        return 1 if self.problem == "regression" else len(self.label_names)

    def has_labels(self, split: str) -> bool:
        data = self.splits.get(split)
        if not data:
            return False
        if self.modality == "text":
            return data[0].label is not None
        return True

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.splits.items()}

    def majority_class_scores(self) -> dict[str, float]:
        """Per labeled evaluation/test split, the best main-metric score a constant prediction
        reaches (the majority class for accuracy): the floor a trained model must clear
        (``data.majority_class_score`` in summary.json; the report's verdict rules use it).
        Classification text tasks, or image splits that expose ``targets``; {} otherwise."""
        if self.problem != "classification":
            return {}
        out = {}
        for split in [*self.eval_splits, *([self.test_split] if self.test_split else [])]:
            data = self.splits.get(split)
            if not data or not self.has_labels(split):
                continue
            if self.modality == "text":
                labels = np.asarray([e.label for e in data], dtype=np.int64)
            elif hasattr(data, "targets"):
                labels = np.asarray(data.targets, dtype=np.int64)
            else:
                continue
            out[split] = max(float(self.metric_fn(np.full(len(labels), c, dtype=np.int64), labels)["main"])
                             for c in range(self.num_labels))
        return out
