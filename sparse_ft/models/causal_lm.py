"""Causal language models (GPT-2) for data-to-text generation (tasks/nlg.py): `AutoModelForCausalLM`
with its pretrained LM head (nothing new is initialised).

Sequences: ``<table tokens> <eos> <text tokens> <eos>`` (GPT-2's only special token, ``<|endoftext|>``,
separates and ends; a tokenizer without an eos token uses its sep token). The loss is the
next-token cross-entropy on the text and its closing eos only (the prompt's labels are -100).
With ``model.linear_layers=true`` (the GPT-2 presets) every transformers ``Conv1D`` (GPT-2's
attention and MLP projections, ``y = x W + b`` with W stored (in, out)) is replaced by an
``nn.Linear`` computing the same function (W stored transposed, (out, in)), so the methods that
select ``nn.Linear`` weights (OMP/IMP/N:M along the input dimension, PST, movement, LoRA) see
GPT-2's projections as they see BERT's; checkpoints then hold the (out, in) layout under the same
names.

A training sequence longer than ``task.max_length`` keeps its first ``task.max_length`` tokens.
Evaluation feeds the prompt (left-padded, so a batch ends together) and decodes with
``generate``: greedy (``task.generation.num_beams=1``) or beam search, stopping at eos or after
``task.generation.max_new_tokens``; the generated ids go to the task's metric, which decodes them
with this bundle's tokenizer (``NLGMetric.decode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tasks.base import TaskData
from .bundle import ModelBundle
from .hub import load_auto_model
from .text import ModelLoadError, load_tokenizer

GEN_DEFAULTS = {"num_beams": 1, "max_new_tokens": 64, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}


def special_ids(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ModelLoadError("model.tokenizer: has neither an eos nor a sep token to end the generated text")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return eos, pad


def make_lm_encoder(tokenizer, max_length: int):
    eos, _ = special_ids(tokenizer)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(task: TaskData, split: str) -> list[dict]:
        train = split == task.train_split
        feats = []
        for ex in task.splits[split]:
            prompt = ids(ex.source)[: max_length - 1] + [eos]
            f = {"labels": ex.uid}
            if train:
                target = ids(ex.target) + [eos]
                seq = (prompt + target)[:max_length]
                lm = ([-100] * len(prompt) + target)[:max_length]
                f.update(input_ids=seq, lm_labels=lm)
            else:
                f.update(input_ids=prompt)
            feats.append(f)
        return feats

    return encode


def make_lm_collate(tokenizer):
    _, pad_id = special_ids(tokenizer)

    def collate(features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        batch = {"labels": torch.tensor([f["labels"] for f in features], dtype=torch.long)}
        if "lm_labels" in features[0]:  # training: right padding, targets beside
            lm = torch.full((n, width), -100, dtype=torch.long)
            for i, f in enumerate(features):
                k = len(f["input_ids"])
                ids[i, :k] = torch.as_tensor(f["input_ids"])
                mask[i, :k] = 1
                lm[i, :k] = torch.as_tensor(f["lm_labels"])
            batch["lm_labels"] = lm
        else:  # prompts to continue: left padding
            for i, f in enumerate(features):
                k = len(f["input_ids"])
                ids[i, width - k:] = torch.as_tensor(f["input_ids"])
                mask[i, width - k:] = 1
        batch.update(input_ids=ids, attention_mask=mask)
        return batch

    return collate


def lm_per_example_loss(module, batch):
    """Negative log-likelihood of each example's text (summed over its target tokens)."""
    logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["lm_labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return nll.sum(dim=1)


def lm_loss(module, batch):
    """Mean next-token cross-entropy over the batch's target tokens."""
    logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), batch["lm_labels"][:, 1:], ignore_index=-100)


def make_generate(tokenizer, generation: dict):
    eos, pad = special_ids(tokenizer)
    opts = {**GEN_DEFAULTS, **{k: v for k, v in generation.items() if v is not None}}
    width = int(opts["max_new_tokens"])

    def predict(module, batch):
        kwargs = dict(max_new_tokens=width, num_beams=int(opts["num_beams"]), do_sample=False, eos_token_id=eos, pad_token_id=pad,
                      length_penalty=float(opts["length_penalty"]), repetition_penalty=float(opts["repetition_penalty"]))
        if int(opts["no_repeat_ngram_size"]):
            kwargs["no_repeat_ngram_size"] = int(opts["no_repeat_ngram_size"])
        out = module.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        gen = out[:, batch["input_ids"].shape[1]:].cpu()
        result = torch.full((len(gen), width), -1, dtype=torch.long)
        for i, row in enumerate(gen):
            row = row.tolist()
            if eos in row:
                row = row[: row.index(eos)]
            result[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        return result

    return predict, opts


def conv1d_to_linear(module) -> int:
    """Replace every transformers Conv1D by an equivalent nn.Linear (weight transposed); returns how many."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    swaps = [(name, m) for name, m in module.named_modules() if isinstance(m, Conv1D)]
    for name, conv in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        n_in, n_out = conv.weight.shape
        lin = nn.Linear(n_in, n_out, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                lin.bias.copy_(conv.bias)
        setattr(parent, child, lin)
    return len(swaps)


def load_lm_module(model_cfg):
    """`AutoModelForCausalLM` from the model config, Conv1D as Linear with model.linear_layers;
    (module, source, number of converted layers)."""
    from transformers import AutoModelForCausalLM

    module, source, _ = load_auto_model(AutoModelForCausalLM, model_cfg)
    converted = conv1d_to_linear(module) if model_cfg.get("linear_layers", False) else 0
    return module, source, converted


def build_causal_lm_bundle(model_cfg, task: TaskData, max_length: int) -> ModelBundle:
    tokenizer = load_tokenizer(model_cfg)
    module, source, converted = load_lm_module(model_cfg)
    eos, pad = special_ids(tokenizer)
    module.config.pad_token_id = pad
    predict, gen = make_generate(tokenizer, dict(task.info.get("generation") or {}))
    metric = task.metric_fn
    if hasattr(metric, "decode"):
        metric.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    return ModelBundle(
        name=model_cfg.name,
        arch=model_cfg.arch,
        module=module,
        source=str(source),
        encode=make_lm_encoder(tokenizer, max_length),
        collate=make_lm_collate(tokenizer),
        loss_fn=lm_loss,
        predict_fn=predict,
        per_example_loss_fn=lm_per_example_loss,
        logits_fn=None,
        tokenizer=tokenizer,
        info={"generation": gen, "sequence": "<table> <eos> <text> <eos>, loss on the text", "conv1d_as_linear": converted},
    )
