"""Validation of the composed config: runs before any data or model is loaded."""

from __future__ import annotations


from ..core.errors import ConfigError  # noqa: F401  (re-exported: the public name)

import difflib
import functools
import re
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# config groups whose keys are checked against their YAML files (`method` has typed options)
CHECKED_GROUPS = ("trainer", "task", "model", "energy", "distributed", "logger")
# keys the code reads (with a default) that no YAML of the group sets
EXTRA_KEYS: dict[str, frozenset] = {}
# only top-level keys are checked: below them sit free-form mappings (model.config: Hugging Face config overrides)


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
    _choice(t, "select_best_store", p, ("disk", "memory"))
    from ..train.trainer import early_stopping_patience, parse_every

    early_stopping_patience(t)  # ConfigError naming trainer.early_stopping_patience

    try:
        parse_every(t.get("checkpoint_every", 0))
    except ValueError as err:
        raise ConfigError("trainer.checkpoint_every", str(err).split(": ", 1)[-1]) from err
    from ..train.preemption import signal_number

    for name in t.get("preempt_signals") or []:
        if signal_number(name) is None:  # SIG_IGN / SIG_DFL are handlers, not signals
            raise ConfigError("trainer.preempt_signals", f"{name!r} is not a signal name")
    _number(t, "dist_timeout_s", p, low=0, low_open=True)
    if not isinstance(t.get("resume_force", False), bool):
        raise ConfigError("trainer.resume_force", f"{t.get('resume_force')!r} must be true or false")
    _number(t, "inference_examples", p, low=1, integer=True)
    validate_num_threads(t.get("num_threads", "auto"))


@functools.lru_cache(maxsize=None)
def group_keys(group: str, conf_dir: str | None = None) -> frozenset:
    """Every top-level key that some YAML file of conf/<group>/ sets (plus EXTRA_KEYS)."""
    from omegaconf import OmegaConf

    keys = set(EXTRA_KEYS.get(group, ()))
    for path in sorted(Path(conf_dir or CONF_DIR, group).glob("*.yaml")):
        data = OmegaConf.load(path)
        if isinstance(data, dict) or hasattr(data, "keys"):
            keys.update(str(k) for k in data.keys() if str(k) != "defaults")
    return frozenset(keys)


# other spellings of our keys (Hugging Face TrainingArguments habits): difflib matches a typo
# against these too, so `lerning_rate` finds `lr` through `learning_rate`
ALIASES: dict[str, dict[str, str]] = {
    "trainer": {
        "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "train_batch_size": "batch_size",
        "per_device_train_batch_size": "batch_size", "per_device_eval_batch_size": "eval_batch_size",
        "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "scheduler", "lr_scheduler": "scheduler",
        "adam_epsilon": "adam_eps", "optim": "optimizer", "eval_steps": "eval_every", "logging_steps": "log_every",
        "save_steps": "checkpoint_every", "fp16": "precision", "bf16": "precision", "dataloader_num_workers": "num_workers",
        "threads": "num_threads",
    },
    "task": {"max_seq_length": "max_length", "data_path": "data_dir", "glue_dir": "data_dir"},
}


def closest_key(key: str, allowed, aliases: dict[str, str] | None = None) -> str | None:
    """The valid key closest to `key` (difflib), looking through `aliases` as well."""
    aliases = {a: k for a, k in (aliases or {}).items() if k in allowed}
    candidates = sorted(set(allowed) | set(aliases))
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not match:
        return None
    return aliases.get(match[0], match[0])


def unknown_key_error(group: str, key: str, allowed, value: str | None = None) -> ConfigError:
    """The error for a key no YAML of `group` has: the closest valid key first."""
    hint = closest_key(key, allowed, ALIASES.get(group))
    did_you_mean = f"did you mean {group}.{hint}{'' if value is None else '=' + value} ({hint!r})? " if hint else ""
    return ConfigError(
        f"{group}.{key}",
        f"unknown key. {did_you_mean}No conf/{group}/*.yaml has {key!r}, so nothing would read it "
        f"(adding + would not help). Valid keys: {', '.join(sorted(allowed))}",
    )


def check_unknown_keys(cfg, groups=CHECKED_GROUPS, conf_dir: str | None = None) -> None:
    """A key that no YAML of its group knows (`+trainer.lerning_rate=1e-3`) would be silently
    ignored: fail naming it and the closest valid key."""
    for group in groups:
        node = cfg.get(group)
        if node is None or not hasattr(node, "keys"):
            continue
        allowed = group_keys(group, conf_dir)
        for key in node.keys():
            key = str(key)
            if key not in allowed:
                raise unknown_key_error(group, key, allowed)


_OVERRIDE = re.compile(r"^\+{0,2}([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.[^=]*)?=(.*)$", re.S)
_OWN_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def command_line_key_error(args: list[str], conf_dir: str | None = None) -> ConfigError | None:
    """A command-line override (`trainer.lerning_rate=1e-3`, with or without `+`) of a key that
    no YAML of its checked group has. Hydra would answer "To append to your config use +…",
    which then fails in validation; this names the closest valid key first, before Hydra composes
    anything. None when every such key exists (or the command brings its own config)."""
    if any(a.split("=", 1)[0] in _OWN_CONFIG_FLAGS for a in args):
        return None
    for arg in args:
        found = None if arg.startswith("-") else _OVERRIDE.match(arg)
        if found is None or found.group(1) not in CHECKED_GROUPS:
            continue
        group, key, value = found.groups()
        allowed = group_keys(group, conf_dir)
        if key not in allowed:
            return unknown_key_error(group, key, allowed, value)
    return None


def validate_num_threads(value) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("trainer.num_threads", f"{value!r} must be auto or an integer >= 1")


def test_file_paths(task_cfg) -> list[Path]:
    """The unlabeled GLUE test file(s) `trainer.predict=test` needs, where task.data_dir is set
    (the Hugging Face GLUE always has its test splits)."""
    data_dir = task_cfg.get("data_dir")
    if task_cfg.get("kind") != "glue" or not data_dir:
        return []
    from ..tasks.glue import GLUE_TASKS

    spec = GLUE_TASKS.get(task_cfg.get("name"))
    if spec is None:
        return []
    files = dict(spec.files)
    return [Path(data_dir) / spec.folder / files[split] for split in spec.test_splits if split in files]


def validate_predict(cfg) -> None:
    if cfg.trainer.get("predict") != "test":
        return
    if cfg.task.get("kind") != "glue" or cfg.task.get("split_scheme") != "glue":
        raise ConfigError("trainer.predict", "GLUE-server submission files need a GLUE task with task.split_scheme=glue")
    missing = [str(p) for p in test_file_paths(cfg.task) if not p.is_file()]
    if missing:
        raise ConfigError(
            "trainer.predict",
            f"test: no unlabeled test file {', '.join(missing)} (task.data_dir={cfg.task.data_dir}); add the GLUE "
            "test file there, use task.data_dir=null (Hugging Face datasets has the test split), or drop trainer.predict",
        )


def torchrun_command(argv: list[str] | None = None, nproc: str = "N") -> str:
    """The command line to launch this run under torchrun (same overrides)."""
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    script = argv[0] if argv and argv[0].endswith(".py") else "run.py"
    args = argv[1:] if argv else []
    return " ".join(["torchrun", f"--nproc_per_node={nproc}", script, *map(shlex.quote, args)])


def validate_launch(cfg, launched_by_torchrun: bool | None = None, argv: list[str] | None = None) -> None:
    """distributed=local_sgd needs several workers: without torchrun it would train as one worker
    with 0 communication rounds and still say `completed`."""
    dist = cfg.get("distributed")
    if dist is None or dist.get("mode", "none") != "local_sgd":
        return
    allow = dist.get("allow_single_worker", False)
    if not isinstance(allow, bool):
        raise ConfigError("distributed.allow_single_worker", f"{allow!r} must be true or false")
    if launched_by_torchrun is None:
        from ..train.distributed import launched_by_torchrun as probe

        launched_by_torchrun = probe()
    if launched_by_torchrun or allow:
        return
    raise ConfigError(
        "distributed.mode",
        "local_sgd trains several workers that exchange sparse updates, but this process was not started by torchrun "
        f"(one worker, no communication). Launch it as: {torchrun_command(argv)} (N = number of workers, e.g. 2); "
        "or add distributed.allow_single_worker=true to run one worker on purpose",
    )


def task_modality(task_cfg) -> str:
    from ..tasks import IMAGE_KINDS

    return "image" if task_cfg.get("kind") in IMAGE_KINDS else "text"


def validate(cfg) -> None:
    """Every check that needs no data and no weights. Raises ConfigError naming the key."""
    from ..methods import method_class
    from ..models import check_fits
    from ..tasks import validate_task_cfg

    check_unknown_keys(cfg)
    if isinstance(cfg.get("seed"), bool) or not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError("seed", f"{cfg.get('seed')!r} must be a non-negative integer")
    validate_trainer(cfg.trainer)
    validate_task_cfg(cfg.task)
    validate_predict(cfg)
    try:
        from ..telemetry.energy import energy_options

        energy_options(cfg.get("energy"))
    except ValueError as err:
        key, _, message = str(err).partition("=")
        raise ConfigError(key, message) from err
    check_fits(cfg.model, task_modality(cfg.task), cfg.task.get("kind"))
    if cfg.model.get("drop_last_layers") is not None:
        _number(cfg.model, "drop_last_layers", "model", low=0, integer=True)
    from ..train.local_sgd import validate_distributed

    validate_distributed(cfg.get("distributed"))
    if cfg.get("job", "train") == "train":
        validate_launch(cfg)
    measurement = cfg.get("measurement")
    if measurement is not None and not isinstance(measurement.get("alone", False), bool):
        raise ConfigError("measurement.alone", f"{measurement.get('alone')!r} must be true or false")
    if not isinstance(cfg.trainer.get("sparse_checkpoints", False), bool):
        raise ConfigError("trainer.sparse_checkpoints", f"{cfg.trainer.get('sparse_checkpoints')!r} must be true or false")
    from ..models import check_method_fits

    check_method_fits(cfg.model, cfg.method.name, cfg.task.get("kind"), cfg.method)
    method = method_class(cfg.method.name)
    method.validate(cfg.method)
    job = cfg.get("job", "train")
    if job == "train" and getattr(method, "kind", "trainer") != "trainer":
        raise ConfigError("method.name", f"{cfg.method.name!r} compresses a finished run: use job=compress source=<run dir>")
    if job == "compress" and getattr(method, "kind", "trainer") != "compressor":
        raise ConfigError("method.name", f"{cfg.method.name!r} trains; job=compress needs a compressor (e.g. method=ere)")
