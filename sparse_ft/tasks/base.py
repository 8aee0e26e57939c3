"""What every task hands to the rest of the run.

A task owns loading, its splits, its label space, its metric and which metric selects the best
checkpoint. It knows nothing about models: text tasks give raw `TextExample`s and the model
bundle tokenises them (encoder, decoder-only and text-to-text models need different inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


class DataError(RuntimeError):
    """Task data missing or malformed. The message names the file or key and how to fix it."""


@dataclass(frozen=True)
class TextExample:
    guid: str  # the row's id in its source (GLUE `index`/`idx`, or `<split>-<n>`)
    text_a: str
    text_b: str | None
    label: int | float | None  # None where the split has no labels (GLUE test)


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
