"""Validation of the composed config: runs before any data or model is loaded.

Each group's keys, types, ranges and allowed values are checked by its schema
(sparse_ft/config/schemas.py; `method` by the method's `Options`); what a task's kind needs by
`tasks.validate_task_cfg`; what needs two groups at once by `check_across_groups`, here.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import ConfigError  # noqa: F401  (re-exported: the public name)
from .schemas import SCHEMAS, parse_groups, unknown_key_error

# config groups whose keys a command-line override is checked against before Hydra composes
CHECKED_GROUPS = ("trainer", "task", "model", "energy", "distributed", "logger")


def check_unknown_keys(cfg) -> None:
    """A key that no schema of its group knows (`+trainer.lerning_rate=1e-3`) would be silently
    ignored: fail naming it and the closest valid key. (Parses every group: bad values fail too.)"""
    parse_groups(cfg)


_OVERRIDE = re.compile(r"^\+{0,2}([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.[^=]*)?=(.*)$", re.S)
_OWN_CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def command_line_key_error(args: list[str]) -> ConfigError | None:
    """A command-line override (`trainer.lerning_rate=1e-3`, with or without `+`) of a key that
    the schema of its checked group does not have. Hydra would answer "To append to your config
    use +…", which then fails in validation; this names the closest valid key first, before Hydra
    composes anything. None when every such key exists (or the command brings its own config)."""
    if any(a.split("=", 1)[0] in _OWN_CONFIG_FLAGS for a in args):
        return None
    for arg in args:
        found = None if arg.startswith("-") else _OVERRIDE.match(arg)
        if found is None or found.group(1) not in CHECKED_GROUPS:
            continue
        group, key, value = found.groups()
        if key not in SCHEMAS[group].keys():
            return unknown_key_error(SCHEMAS[group], key, value)
    return None


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


def check_across_groups(cfg) -> None:
    """What no single group's schema can say: the task's test files for trainer.predict, a model
    that cannot run the task, local SGD without torchrun, a method that cannot run the model or
    the task, a method of the wrong kind for the job."""
    from ..methods import method_class
    from ..models import check_fits, check_method_fits

    validate_predict(cfg)
    check_fits(cfg.model, task_modality(cfg.task), cfg.task.get("kind"))
    job = cfg.get("job", "train")
    if job == "train":
        validate_launch(cfg)
    check_method_fits(cfg.model, cfg.method.name, cfg.task.get("kind"), cfg.method)
    method = method_class(cfg.method.name)
    if job == "train" and getattr(method, "kind", "trainer") != "trainer":
        raise ConfigError("method.name", f"{cfg.method.name!r} compresses a finished run: use job=compress source=<run dir>")
    if job == "compress" and getattr(method, "kind", "trainer") != "compressor":
        raise ConfigError("method.name", f"{cfg.method.name!r} trains; job=compress needs a compressor (e.g. method=ere)")


def validate(cfg) -> None:
    """Every check that needs no data and no weights. Raises ConfigError naming the key."""
    from ..methods import method_class
    from ..tasks import validate_task_cfg

    parse_groups(cfg)  # every group's schema: unknown keys ("did you mean"), types, ranges, allowed values
    validate_task_cfg(cfg.task)  # what the task's kind needs (which keys it reads, its data folder)
    check_across_groups(cfg)
    method_class(cfg.method.name).validate(cfg.method)  # the method's Options
