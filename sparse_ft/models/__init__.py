"""Model builders: config → `ModelBundle` (module + how to feed it)."""

from __future__ import annotations

from ..core.errors import ConfigError
from ..tasks.base import TaskData
from .bundle import ModelBundle
from .text import ModelLoadError

ARCHS = ("encoder", "decoder", "seq2seq", "vision", "causal_lm")
NLG_KINDS = ("e2e", "dart", "webnlg")


# task kinds that need one architecture: kind -> (archs, why)
TASK_ARCHS = {"squad": (("encoder",), "extractive QA puts a start/end head on an encoder's token states (BERT, RoBERTa, MiniLM)")}
for _kind in NLG_KINDS:
    TASK_ARCHS[_kind] = (("causal_lm",), "data-to-text generation continues the table with a causal LM's own LM head (gpt2, gpt2_medium, tiny_gpt2)")


def check_fits(model_cfg, modality: str, task_kind: str | None = None) -> None:
    """A model whose inputs/head cannot serve the task fails here, before anything loads."""
    arch = model_cfg.get("arch")
    if arch not in ARCHS:
        raise ConfigError("model.arch", f"{arch!r} is not one of {', '.join(ARCHS)}")
    if (arch == "vision") != (modality == "image"):
        kind = "an image model" if arch == "vision" else "a text model"
        raise ConfigError("model", f"model={model_cfg.get('name')} is {kind} (arch={arch}) and cannot run a {modality} task")
    if arch == "causal_lm" and task_kind is not None and task_kind not in NLG_KINDS:
        raise ConfigError("model", f"model={model_cfg.get('name')} is a causal LM (arch=causal_lm, generation only) and cannot run "
                          f"task={task_kind}: it has no classification/QA head; use arch=decoder (e.g. model=opt_125m) for classification")
    if task_kind in TASK_ARCHS and arch not in TASK_ARCHS[task_kind][0]:
        archs, why = TASK_ARCHS[task_kind]
        raise ConfigError("model", f"model={model_cfg.get('name')} (arch={arch}) cannot run task={task_kind}: {why}; "
                          f"use a model with arch {' or '.join(archs)}")
    if not model_cfg.get("random_init") and not model_cfg.get("name_or_path"):
        raise ConfigError("model.name_or_path", "set a hub id, a local path or bundled:<package> (or random_init=true)")


# methods that need a text model's inputs (token ids, a hidden-state stream read per token):
# method -> why it cannot run on an image model
TEXT_ONLY_METHODS = {
    "adapter": "its bottleneck adapters are placed after the text transformer's attention/FFN outputs (text models only)",
    "ia3": "peft's (IA)3 has no target modules for image classifiers; the method runs on text models",
    "prompt_tuning": "soft prompts are prepended to token embeddings; an image model has no token ids",
    "read": "READ's recurrent side network reads a text transformer's per-layer hidden states and heads",
    "lst": "LST's ladder side network reads a text transformer's per-layer hidden states and heads",
}
# methods that need a Hugging Face module (peft): not a torchvision ResNet
HF_ONLY_METHODS = {"lora": "peft places LoRA on Hugging Face modules; a torchvision ResNet is not one (use a ViT: model=vit_base)"}


# methods that read a sequence-classification head (or prepend to its inputs), per task kind
TASK_METHODS = {
    "squad": {
        "prompt_tuning": "peft's prompt tuning is set up for sequence classification: the virtual tokens shift the start/end positions",
        "read": "READ's side network ends in a sequence-classification head, not a start/end span head",
        "lst": "LST's side network ends in a sequence-classification head, not a start/end span head",
    },
}
_LM_WHY = {
    "adapter": "its adapters and the head it trains are set up for classifiers (encoder, decoder, T5), not a causal LM's generation",
    "ia3": "it is set up through peft for sequence classification / T5, not a causal LM's generation",
    "prompt_tuning": "it is set up through peft for sequence classification / T5, not a causal LM's generation",
    "read": "READ's side network ends in a classification head, not an LM head",
    "lst": "LST's side network ends in a classification head, not an LM head",
}
for _kind in NLG_KINDS:
    TASK_METHODS[_kind] = dict(_LM_WHY)


def check_method_fits(model_cfg, method_name, task_kind: str | None = None, method_cfg=None) -> None:
    """A method (or one of its options) that cannot run on the model or the task fails here, naming
    why, before anything loads."""
    why = TASK_METHODS.get(task_kind, {}).get(method_name)
    if why is not None:
        raise ConfigError("method.name", f"method={method_name} cannot run task={task_kind}: {why}")
    if method_cfg is not None and method_cfg.get("fisher") == "expected" and (task_kind in TASK_ARCHS or model_cfg.get("arch") == "causal_lm"):
        raise ConfigError("method.fisher", f"expected needs class logits (an expectation over the label classes); task={task_kind} "
                          f"with model={model_cfg.get('name')} has none (spans / generated text): use method.fisher=empirical")
    if model_cfg.get("arch") != "vision":
        return
    why = TEXT_ONLY_METHODS.get(method_name)
    if why is None and method_name in HF_ONLY_METHODS:
        from .hf_vision import is_hf_vision

        why = None if is_hf_vision(model_cfg) else HF_ONLY_METHODS[method_name]
    if why is not None:
        raise ConfigError("method.name", f"method={method_name} cannot run on model={model_cfg.get('name')} (an image model): {why}")


def build_model(model_cfg, task: TaskData, max_length: int = 128) -> ModelBundle:
    check_fits(model_cfg, task.modality, task.info.get("kind"))
    if task.problem == "generation":
        from .causal_lm import build_causal_lm_bundle

        return build_causal_lm_bundle(model_cfg, task, max_length)
    if task.problem == "extractive_qa":
        from .qa import build_qa_bundle

        return build_qa_bundle(model_cfg, task, max_length)
    if model_cfg.arch == "vision":
        from .hf_vision import is_hf_vision

        if is_hf_vision(model_cfg):  # transformers ViT / DINO
            from .hf_vision import build_hf_vision_bundle

            return build_hf_vision_bundle(model_cfg, task)
        from .vision import build_vision_bundle

        return build_vision_bundle(model_cfg, task)
    from .text import build_text_bundle

    return build_text_bundle(model_cfg, task, max_length)


__all__ = ["ModelBundle", "ModelLoadError", "build_model", "check_fits", "check_method_fits"]
