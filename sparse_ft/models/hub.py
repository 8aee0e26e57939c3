"""Loading a Hugging Face `AutoModelFor…` class from a model config: a random init from
`model.config` (which names `model_type`) or pretrained weights from `model.name_or_path`."""

from __future__ import annotations

from .text import ModelLoadError, _hub_error, resolve_source


def load_auto_model(auto_cls, model_cfg, num_labels: int | None = None, **load_kwargs):
    """(module, source, missing keys): `missing keys` are the module's keys the checkpoint lacked
    (None for a random init, where every weight is new). `num_labels`: size the classification
    head (labels named "0", "1", …); `load_kwargs` go to `from_pretrained`."""
    from transformers import AutoConfig

    overrides = dict(model_cfg.get("config") or {})
    if model_cfg.get("random_init"):
        model_type = overrides.pop("model_type", None)
        if model_type is None:
            raise ModelLoadError("model.config.model_type: needed to build a model with random_init=true")
        labels = {} if num_labels is None else {"num_labels": num_labels}
        return auto_cls.from_config(AutoConfig.for_model(model_type, **overrides, **labels)), f"random init ({model_type})", None
    spec = model_cfg.name_or_path
    path = resolve_source(spec, "model.name_or_path")
    kwargs = dict(revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code")))
    try:
        config = AutoConfig.from_pretrained(path, **kwargs, **overrides)
        if num_labels is not None:
            config.num_labels = num_labels
            config.id2label = {i: str(i) for i in range(num_labels)}
            config.label2id = {str(i): i for i in range(num_labels)}
        module, info = auto_cls.from_pretrained(path, config=config, output_loading_info=True, **load_kwargs, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_error("model.name_or_path", spec, err) from err
    return module, path, list(info.get("missing_keys") or ())
