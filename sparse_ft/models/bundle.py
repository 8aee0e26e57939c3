"""The model as the rest of the run sees it: one `nn.Module` plus how to feed it.

Methods look at `bundle.module` (its parameters, its `state_dict()` keys are the checkpoint
keys); the trainer only calls `collate`, `loss` and `predict`, so it never needs to know whether
the model is an encoder, a decoder-only LM, a text-to-text model or a CNN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


@dataclass
class ModelBundle:
    name: str
    arch: str  # encoder | decoder | seq2seq | vision
    module: nn.Module
    source: str  # where the weights came from (path, hub id, "random init")
    encode: Callable[[Any, str], Any]  # (task, split) -> Dataset of features
    collate: Callable[[list], dict]  # features -> batch of tensors (keys below)
    loss_fn: Callable[[nn.Module, dict], torch.Tensor]
    predict_fn: Callable[[nn.Module, dict], torch.Tensor]
    # per-example negative log-likelihood, shape (B,) (T5: summed over target tokens); used
    # by methods that need per-sample gradients (FISH's Fisher)
    per_example_loss_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None
    # class scores, shape (B, C) (None for text-to-text models); "expected" Fisher needs them
    logits_fn: Callable[[nn.Module, dict], torch.Tensor] | None = None
    tokenizer: Any = None
    info: dict = field(default_factory=dict)
    # parameters of the pretrained body that hold no trained values (missing from the checkpoint,
    # or a sentence-transformers checkpoint's never trained BERT pooler: models.text.newly_initialized);
    # the new task head is not listed. Methods that freeze the backbone train them with the head.
    newly_initialized: tuple[str, ...] = ()

    # A batch is a dict of tensors; "labels" holds the targets used for the metric and, for
    # text-to-text models, "target_ids" the decoder targets.
    def loss(self, batch: dict) -> torch.Tensor:
        return self.loss_fn(self.module, batch)

    def per_example_loss(self, batch: dict) -> torch.Tensor:
        return self.per_example_loss_fn(self.module, batch)

    def logits(self, batch: dict) -> torch.Tensor:
        if self.logits_fn is None:
            raise NotImplementedError(f"{self.arch} models have no class logits")
        return self.logits_fn(self.module, batch)

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        return self.predict_fn(self.module, batch)

    def num_tokens(self, batch: dict) -> int:
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else 0


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def labels_of(batch: dict) -> np.ndarray:
    return batch["labels"].detach().cpu().numpy()
