"""Extractive question answering (SQuAD v1.1) on encoder models: `AutoModelForQuestionAnswering`,
the standard start/end head (a new Linear(hidden, 2) over the token states).

Features (the BERT recipe): ``[CLS] question [SEP] context [SEP]`` truncated to ``task.max_length``
tokens, the context only (``only_second``); a context that does not fit is cut into several
windows overlapping by ``task.doc_stride`` tokens, each a feature that carries its example's id
as ``labels``. Training targets: the first ground-truth answer's first/last token in the window,
or the [CLS] position (0) when the answer is not wholly inside it. Prediction: in every window,
the span (s, e) over context tokens with s <= e < s + ``task.max_answer_length`` maximising
start_logit[s] + end_logit[e] (exhaustively, not only among the top-20 of each as in the
Hugging Face example script); the task's metric keeps each example's best window and scores the
context characters the span covers (tasks/squad.py).

A question longer than ``task.max_length`` leaves no room for context: it fails naming the key,
after the tokenizer loads and before the model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError
from ..tasks.base import TaskData
from .bundle import ModelBundle
from .hub import load_auto_model
from .text import MODEL_INPUTS, ModelLoadError, load_tokenizer, newly_initialized


def check_question_lengths(tokenizer, task: TaskData, max_length: int, doc_stride: int) -> None:
    """Every question must leave at least one context token and the stride must fit the window."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    for split, examples in task.splits.items():
        if not examples:
            continue
        lengths = [len(ids) for ids in tokenizer([ex.question for ex in examples], add_special_tokens=False)["input_ids"]]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        room = max_length - special - lengths[i]
        if room < 1:
            raise ConfigError("task.max_length", f"{max_length} tokens leave no room for the context: the longest question of "
                              f"split {split!r} ({examples[i].guid!r}) has {lengths[i]} tokens + {special} special tokens; "
                              f"raise task.max_length (SQuAD: 384)")
        if doc_stride >= room:
            raise ConfigError("task.doc_stride", f"{doc_stride} must be smaller than the context room of a window "
                              f"({room} tokens = task.max_length {max_length} - longest question {lengths[i]} - {special} special); "
                              "lower task.doc_stride or raise task.max_length")


def make_qa_encoder(tokenizer, max_length: int, doc_stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError("model.tokenizer: SQuAD needs a fast tokenizer (character offsets of each token)")

    def encode(task: TaskData, split: str) -> list[dict]:
        examples = task.splits[split]
        if not examples:
            return []
        enc = tokenizer([ex.question for ex in examples], [ex.context for ex in examples], truncation="only_second",
                        max_length=max_length, stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
        feats = []
        for i in range(len(enc["input_ids"])):
            ex = examples[enc["overflow_to_sample_mapping"][i]]
            seq = enc.sequence_ids(i)
            offsets = [tuple(o) if seq[k] == 1 else (-1, -1) for k, o in enumerate(enc["offset_mapping"][i])]
            f = {k: enc[k][i] for k in MODEL_INPUTS if k in enc}
            f["offsets"] = offsets
            f["labels"] = ex.uid
            start = end = 0
            if ex.answers:
                a0 = ex.answer_starts[0]
                a1 = a0 + len(ex.answers[0])
                ctx = [k for k, s in enumerate(seq) if s == 1]
                if ctx and offsets[ctx[0]][0] <= a0 and offsets[ctx[-1]][1] >= a1:
                    start = next(k for k in ctx if offsets[k][1] > a0)
                    end = next(k for k in reversed(ctx) if offsets[k][0] < a1)
            f["start_positions"], f["end_positions"] = start, end
            feats.append(f)
        return feats

    return encode


def make_qa_collate(tokenizer):
    pad_id = tokenizer.pad_token_id or 0

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key in MODEL_INPUTS:
            if key in features[0]:
                out = torch.full((len(features), width), pad_id if key == "input_ids" else 0, dtype=torch.long)
                for i, f in enumerate(features):
                    out[i, : len(f[key])] = torch.as_tensor(f[key], dtype=torch.long)
                batch[key] = out
        offsets = torch.full((len(features), width, 2), -1, dtype=torch.long)
        for i, f in enumerate(features):
            offsets[i, : len(f["offsets"])] = torch.as_tensor(f["offsets"], dtype=torch.long)
        batch["offsets"] = offsets
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["start_positions"] = torch.tensor([f["start_positions"] for f in features], dtype=torch.long)
        batch["end_positions"] = torch.tensor([f["end_positions"] for f in features], dtype=torch.long)
        return batch

    return collate


def _qa_logits(module, batch):
    out = module(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
    return out.start_logits.float(), out.end_logits.float()


def qa_per_example_loss(module, batch):
    """(CE(start) + CE(end)) / 2 per feature, the loss of BERT's SQuAD head."""
    start, end = _qa_logits(module, batch)
    mask = batch["attention_mask"] == 0
    start, end = start.masked_fill(mask, -1e4), end.masked_fill(mask, -1e4)
    return (F.cross_entropy(start, batch["start_positions"], reduction="none")
            + F.cross_entropy(end, batch["end_positions"], reduction="none")) / 2


def qa_loss(module, batch):
    return qa_per_example_loss(module, batch).mean()


def best_spans(start: torch.Tensor, end: torch.Tensor, offsets: torch.Tensor, max_answer_length: int) -> torch.Tensor:
    """(B, 3): start_char, end_char, score of the best valid span per row ((-1, -1, -inf) if none)."""
    valid = offsets[..., 0] >= 0  # context tokens
    length = start.shape[1]
    s_idx = torch.arange(length, device=start.device)
    gap = s_idx.view(1, -1) - s_idx.view(-1, 1)  # [s, e] -> e - s
    allowed = (gap >= 0) & (gap < max_answer_length)
    score = start.unsqueeze(2) + end.unsqueeze(1)  # (B, s, e)
    ok = allowed.unsqueeze(0) & valid.unsqueeze(2) & valid.unsqueeze(1)
    score = score.masked_fill(~ok, float("-inf"))
    flat = score.flatten(1)
    best, arg = flat.max(dim=1)
    s, e = arg // length, arg % length
    rows = torch.arange(len(start), device=start.device)
    start_char = offsets[rows, s, 0].float()
    end_char = offsets[rows, e, 1].float()
    none = torch.isinf(best)
    start_char[none], end_char[none] = -1.0, -1.0
    return torch.stack([start_char, end_char, best], dim=1)


def load_qa_module(model_cfg):
    """`AutoModelForQuestionAnswering` from the model config (random init or weights); (module, source, the body's
    parameters with no trained values (`newly_initialized`), sorted)."""
    from transformers import AutoModelForQuestionAnswering

    module, source, missing = load_auto_model(AutoModelForQuestionAnswering, model_cfg)
    return module, source, [] if missing is None else sorted(newly_initialized(module, missing, source))


def build_qa_bundle(model_cfg, task: TaskData, max_length: int) -> ModelBundle:
    doc_stride = int(task.info.get("doc_stride", 128))
    max_answer = int(task.info.get("max_answer_length", 30))
    tokenizer = load_tokenizer(model_cfg)
    check_question_lengths(tokenizer, task, max_length, doc_stride)  # before the model loads
    module, source, new = load_qa_module(model_cfg)

    def predict(mod, batch):
        start, end = _qa_logits(mod, batch)
        return best_spans(start, end, batch["offsets"], max_answer).cpu()

    return ModelBundle(
        name=model_cfg.name,
        arch=model_cfg.arch,
        module=module,
        source=str(source),
        encode=make_qa_encoder(tokenizer, max_length, doc_stride),
        collate=make_qa_collate(tokenizer),
        loss_fn=qa_loss,
        predict_fn=predict,
        per_example_loss_fn=qa_per_example_loss,
        logits_fn=None,
        tokenizer=tokenizer,
        info={"head": "start/end (AutoModelForQuestionAnswering)", "doc_stride": doc_stride, "max_answer_length": max_answer},
        newly_initialized=tuple(new),
    )
