"""Tasks: data, splits, label space and metrics (see ``base.TaskData``).

``validate_task_cfg(task_cfg)`` runs cheap checks before anything loads; ``load_task(task_cfg, seed)``
dispatches on ``task.kind``:

* ``glue``          — the nine GLUE tasks (``glue.py``), local TSV folder or Hugging Face datasets
* ``synthetic_nli`` — deterministic generated sentence-pair task (``synthetic.py``)
* ``cifar10``       — torchvision CIFAR-10 (``vision.py``)
* ``digits``        — scikit-learn's bundled digits, as 3x32x32 images (``vision.py``)
* ``cifar100``      — torchvision CIFAR-100 (``images.py``)
* ``tiny_imagenet`` — Tiny-ImageNet, the official folder or Hugging Face datasets (``images.py``)
* ``squad``         — SQuAD v1.1 extractive QA, official JSON or Hugging Face datasets (``squad.py``)
* ``e2e`` / ``dart`` / ``webnlg`` — data-to-text generation from the official files (``nlg.py``)
"""

from __future__ import annotations

import logging
import os
from numbers import Integral

from ..core.errors import ConfigError
from .base import DataError, TaskData, TextExample

logger = logging.getLogger(__name__)

TASK_KINDS = ("glue", "synthetic_nli", "cifar10", "digits", "cifar100", "tiny_imagenet", "squad", "e2e", "dart", "webnlg")
IMAGE_KINDS = ("cifar10", "digits", "cifar100", "tiny_imagenet")
SPLIT_SCHEMES = ("glue", "read")

__all__ = [
    "DataError",
    "TaskData",
    "TextExample",
    "TASK_KINDS",
    "IMAGE_KINDS",
    "SPLIT_SCHEMES",
    "load_task",
    "validate_task_cfg",
    "check_splits",
]


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive_int(cfg, key: str, *, optional: bool) -> None:
    if key not in cfg:
        return
    value = cfg.get(key)
    if value is None and optional:
        return
    if not _is_int(value) or value <= 0:
        allowed = "a positive integer or null" if optional else "a positive integer"
        raise ConfigError(f"task.{key}", f"must be {allowed}, got {value!r}")


def _bool(cfg, key: str) -> None:
    if key in cfg and not isinstance(cfg.get(key), bool):
        raise ConfigError(f"task.{key}", f"must be true or false, got {cfg.get(key)!r}")


def _string(cfg, key: str, *, optional: bool) -> None:
    if key not in cfg:
        return
    value = cfg.get(key)
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"task.{key}", f"must be a non-empty string{' or null' if optional else ''}, got {value!r}")


def _local_or_hub(cfg, expected: str) -> None:
    """`task.data_dir` (an existing folder holding `expected`) or, when it is null, `task.hf_dataset`."""
    _string(cfg, "data_dir", optional=True)
    data_dir = cfg.get("data_dir")
    if data_dir is None:
        _string(cfg, "hf_dataset", optional=False)
    elif not os.path.isdir(data_dir):
        raise ConfigError("task.data_dir", f"{data_dir!r} is not an existing directory (expected {expected}; "
                          "or task.data_dir=null to use task.hf_dataset)")


def _no_split_scheme(cfg, kind: str, splits: str) -> None:
    if cfg.get("split_scheme", None) is not None:
        raise ConfigError("task.split_scheme", f"not used by {kind} ({splits}); leave it unset")


def validate_task_cfg(task_cfg) -> None:
    """Cheap checks of a task config; raises :class:`ConfigError` naming the key. Loads nothing."""
    if task_cfg is None:
        raise ConfigError("task", "missing; choose one, e.g. task=rte")
    kind = task_cfg.get("kind")
    if kind not in TASK_KINDS:
        raise ConfigError("task.kind", f"unknown kind {kind!r}; expected one of {list(TASK_KINDS)}")
    name = task_cfg.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("task.name", f"must be a non-empty string, got {name!r}")
    for key in ("max_train_samples", "max_eval_samples"):
        _positive_int(task_cfg, key, optional=True)
    _positive_int(task_cfg, "max_length", optional=False)

    if kind == "glue":
        from .glue import GLUE_TASKS

        if name not in GLUE_TASKS:
            raise ConfigError("task.name", f"unknown GLUE task {name!r}; expected one of {sorted(GLUE_TASKS)}")
        scheme = task_cfg.get("split_scheme", "glue")
        if scheme not in SPLIT_SCHEMES:
            raise ConfigError("task.split_scheme", f"must be one of {list(SPLIT_SCHEMES)}, got {scheme!r}")
        _string(task_cfg, "data_dir", optional=True)
        data_dir = task_cfg.get("data_dir")
        if data_dir is not None and not os.path.isdir(data_dir):
            raise ConfigError(
                "task.data_dir",
                f"{data_dir!r} is not an existing directory (expected a GLUE folder with e.g. "
                f"RTE/train.tsv; or set task.data_dir=null to use Hugging Face datasets)",
            )
        _string(task_cfg, "hf_dataset", optional=False)
        _string(task_cfg, "hf_config", optional=False)
    elif kind == "synthetic_nli":
        for key in ("num_train", "num_validation", "num_test"):
            _positive_int(task_cfg, key, optional=False)
        if "seed_data" in task_cfg and not _is_int(task_cfg.get("seed_data")):
            raise ConfigError("task.seed_data", f"must be an integer, got {task_cfg.get('seed_data')!r}")
        if task_cfg.get("split_scheme", None) not in (None, "glue"):
            raise ConfigError("task.split_scheme", "synthetic_nli has fixed train/validation/test splits; leave it unset")
    elif kind == "squad":
        for key in ("doc_stride", "max_answer_length"):
            _positive_int(task_cfg, key, optional=False)
        if task_cfg.get("doc_stride", 128) >= task_cfg.get("max_length", 384):
            raise ConfigError("task.doc_stride", f"{task_cfg.get('doc_stride')} must be smaller than task.max_length={task_cfg.get('max_length')}")
        _local_or_hub(task_cfg, "a folder with the official train-v1.1.json and dev-v1.1.json")
        _no_split_scheme(task_cfg, kind, "train / the official dev set")
    elif kind in ("e2e", "dart", "webnlg"):
        _string(task_cfg, "data_dir", optional=kind == "e2e")  # its files are checked when the task loads (DataError naming each)
        if task_cfg.get("data_dir") is None:
            _string(task_cfg, "hf_dataset", optional=False)
        gen = task_cfg.get("generation") or {}
        for key in ("num_beams", "max_new_tokens"):
            value = gen.get(key)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ConfigError(f"task.generation.{key}", f"must be a positive integer, got {value!r}")
        for key in gen:
            if key not in ("num_beams", "max_new_tokens", "length_penalty", "no_repeat_ngram_size", "repetition_penalty"):
                raise ConfigError(f"task.generation.{key}", "unknown key (num_beams, max_new_tokens, length_penalty, "
                                  "no_repeat_ngram_size, repetition_penalty)")
        _no_split_scheme(task_cfg, kind, "the official train / dev / test files")
    else:  # image tasks
        if kind in ("cifar10", "cifar100"):
            _string(task_cfg, "root", optional=False)
        if kind == "tiny_imagenet":
            _local_or_hub(task_cfg, "the official tiny-imagenet-200 folder")
        _bool(task_cfg, "download")
        _bool(task_cfg, "augment")
        _bool(task_cfg, "verify_md5")
        _no_split_scheme(task_cfg, kind, "fixed splits")


def load_task(task_cfg, seed: int) -> TaskData:
    """Validate ``task_cfg`` and load the task. Data and splits never depend on ``seed``."""
    validate_task_cfg(task_cfg)
    kind = task_cfg.get("kind")
    if kind == "glue":
        from .glue import load_glue as loader
    elif kind == "synthetic_nli":
        from .synthetic import load_synthetic_nli as loader
    elif kind == "cifar10":
        from .vision import load_cifar10 as loader
    elif kind == "squad":
        from .squad import load_squad as loader
    elif kind in ("e2e", "dart", "webnlg"):
        from .nlg import load_nlg as loader
    elif kind == "cifar100":
        from .images import load_cifar100 as loader
    elif kind == "tiny_imagenet":
        from .images import load_tiny_imagenet as loader
    else:
        from .vision import load_digits_task as loader
    task = loader(task_cfg, seed)
    task.info.setdefault("kind", kind)
    task.info["run_seed"] = seed
    logger.info(
        "task %s (%s): %s; sizes %s; source %s",
        task.name,
        kind,
        task.info.get("split_scheme"),
        task.sizes(),
        task.info.get("source"),
    )
    return task


def split_origin(task: TaskData, split: str) -> str:
    """Where a split's examples come from, for an error message: the file (GLUE TSV), the dataset
    (Hugging Face) or the task; a split the READ scheme carves out names the files it comes from."""
    info = task.info
    files = info.get("files") or {}
    if info.get("source") == "tsv":
        if split in files and not info.get("read_rule"):
            return files[split]
        return f"{', '.join(files.values())} (split {split!r} by the READ rule: {info.get('read_rule')})"
    if info.get("source") == "huggingface":
        return f"Hugging Face dataset {info.get('hf_dataset')!r}/{info.get('hf_config')!r}, split {split!r}"
    return f"task {task.name!r} ({info.get('source')}), split {split!r}"


def check_splits(task: TaskData, needed) -> None:
    """Every split in `needed` that the task has must hold examples (after the split scheme and
    task.max_*_samples): an empty one would train 0 steps and still say `completed`, or spin in
    the step loop. Raises :class:`DataError` naming the file (or dataset). Runs before any model
    is built."""
    for split in needed:
        if split not in task.splits or len(task.splits[split]):
            continue
        original = (task.info.get("original_sizes") or {}).get(split)
        after = ""
        if original:
            key = "max_train_samples" if split == task.train_split else "max_eval_samples"
            after = f" (it had {original} before task.{key}={task.info.get(key)} and the split scheme)"
        elif task.info.get("read_rule"):
            after = " (the READ scheme left it empty: too few rows to split)"
        raise DataError(f"{split_origin(task, split)}: split {split!r} has no examples{after}; "
                        "this job needs it (a header-only file?): add data, or point task.data_dir at the full files")
