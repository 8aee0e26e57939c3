"""Validation of the composed config: runs before any data or model is loaded."""

from __future__ import annotations


from .core.errors import ConfigError  # noqa: F401  (re-exported: the public name)


def _number(cfg, key: str, prefix: str, *, low=None, high=None, low_open=False, integer=False):
    value = cfg.get(key)
    full = f"{prefix}.{key}"
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(full, f"{value!r} is not {'an integer' if integer else 'a number'}")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(full, f"{value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(full, f"{value!r} must be <= {high}")
    return value


def _choice(cfg, key: str, prefix: str, choices) -> None:
    value = cfg.get(key)
    if value not in choices:
        raise ConfigError(f"{prefix}.{key}", f"{value!r} is not one of {', '.join(map(str, choices))}")


def validate_trainer(t) -> None:
    p = "trainer"
    _choice(t, "optimizer", p, ("adamw", "sgd"))
    _number(t, "lr", p, low=0, low_open=True)
    _number(t, "weight_decay", p, low=0)
    _number(t, "momentum", p, low=0, high=1)
    _number(t, "adam_eps", p, low=0, low_open=True)
    betas = t.get("adam_betas")
    if betas is None or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError("trainer.adam_betas", f"{betas!r} must be two numbers in [0, 1)")
    _choice(t, "scheduler", p, ("linear", "cosine", "constant"))
    _choice(t, "fused", p, ("auto", True, False))
    _number(t, "warmup_ratio", p, low=0, high=1)
    _number(t, "warmup_steps", p, low=0, integer=True)
    _number(t, "epochs", p, low=0)
    _number(t, "max_steps", p, low=0, integer=True)
    if t.max_steps == 0 and t.epochs == 0:
        raise ConfigError("trainer.epochs", "0 epochs and max_steps=0: nothing would train")
    for key in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
        _number(t, key, p, low=1, integer=True)
    _number(t, "max_grad_norm", p, low=0)
    _number(t, "eval_every", p, low=0, integer=True)
    _number(t, "num_workers", p, low=0, integer=True)
    _choice(t, "precision", p, ("fp32", "bf16", "fp16"))
    device = t.get("device")
    if device not in ("auto", "cpu", "cuda") and not (isinstance(device, str) and device.startswith("cuda:")):
        raise ConfigError("trainer.device", f"{device!r} is not auto, cpu, cuda or cuda:N")
    _choice(t, "predict", p, (None, "test"))
    _choice(t, "progress", p, ("auto", True, False))
    from .train.trainer import parse_every

    try:
        parse_every(t.get("checkpoint_every", 0))
    except ValueError as err:
        raise ConfigError("trainer.checkpoint_every", str(err).split(": ", 1)[-1]) from err
    import signal

    for name in t.get("preempt_signals") or []:
        if not hasattr(signal, name if str(name).startswith("SIG") else f"SIG{name}"):
            raise ConfigError("trainer.preempt_signals", f"{name!r} is not a signal name")
    _number(t, "dist_timeout_s", p, low=0, low_open=True)
    _number(t, "inference_examples", p, low=1, integer=True)


def task_modality(task_cfg) -> str:
    return "image" if task_cfg.get("kind") in ("cifar10", "digits") else "text"


def validate(cfg) -> None:
    """Every check that needs no data and no weights. Raises ConfigError naming the key."""
    from .methods import method_class
    from .models import check_fits
    from .tasks import validate_task_cfg

    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError("seed", f"{cfg.get('seed')!r} must be a non-negative integer")
    validate_trainer(cfg.trainer)
    validate_task_cfg(cfg.task)
    if cfg.trainer.predict == "test" and (cfg.task.get("kind") != "glue" or cfg.task.get("split_scheme") != "glue"):
        raise ConfigError("trainer.predict", "GLUE-server submission files need a GLUE task with task.split_scheme=glue")
    try:
        from .telemetry.energy import energy_options

        energy_options(cfg.get("energy"))
    except ValueError as err:
        key, _, message = str(err).partition("=")
        raise ConfigError(key, message) from err
    check_fits(cfg.model, task_modality(cfg.task))
    from .train.local_sgd import validate_distributed

    validate_distributed(cfg.get("distributed"))
    if not isinstance(cfg.trainer.get("sparse_checkpoints", False), bool):
        raise ConfigError("trainer.sparse_checkpoints", f"{cfg.trainer.get('sparse_checkpoints')!r} must be true or false")
    method = method_class(cfg.method.name)
    method.validate(cfg.method)
    job = cfg.get("job", "train")
    if job == "train" and getattr(method, "kind", "trainer") != "trainer":
        raise ConfigError("method.name", f"{cfg.method.name!r} compresses a finished run: use job=compress source=<run dir>")
    if job == "compress" and getattr(method, "kind", "trainer") != "compressor":
        raise ConfigError("method.name", f"{cfg.method.name!r} trains; job=compress needs a compressor (e.g. method=ere)")
