"""Checkpoint files: safetensors for tensors, written atomically (core/io.py: temp file + rename).

`checkpoints/last/` has one typed layout with one owner: `TrainerCheckpoint` (what
`trainer_state.pt` holds) and `Resume` (a verified checkpoint folder as a run continues from it);
the trainer writes through them, the train job and the trainer read through them.

A write that fails because the disk (or quota) is full raises `StorageError` naming the file being
written (`writing(path)`); a checkpoint that cannot be trusted raises `CheckpointError` naming its
file: missing, truncated, a manifest without its file list, a file name that leaves the checkpoint
folder, or a pickle that `torch.load(weights_only=True)` refuses."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.io import default_mode, writing
from .state import WORKER_KEYS

# --- checkpoints/last: everything a resume needs ----------------------------------------------

import hashlib
import json
import shutil

MANIFEST = "manifest.json"
LAST_FILES = ("model.safetensors", "trainer_state.pt")  # what every checkpoints/last holds (Trainer.save_last)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or corrupted; the message names the file."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checkpoint_dir(target: Path, tensors: dict[str, dict[str, torch.Tensor]], objects: dict[str, object], info: dict) -> None:
    """Write `target/` atomically: files go to a temp dir with a manifest of sha256 sums, which
    then replaces the old directory by two renames (a crash in between leaves `<name>.prev`,
    which `find_checkpoint` picks up)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)  # the temp dir must sit beside it: rename is atomic only within a filesystem
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp's 0o700 would become checkpoints/last's mode
        files = {}
        for name, tdict in tensors.items():
            plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tdict.items()}
            with writing(target / name):
                save_file(plain, str(tmp / name))
            os.chmod(tmp / name, default_mode())  # safetensors writes its files 0o600
            files[name] = _sha256(tmp / name)
        for name, obj in objects.items():
            with writing(target / name), open(tmp / name, "wb") as f:  # a file object: a full disk raises ENOSPC, not a bare iostream error
                torch.save(obj, f)
            files[name] = _sha256(tmp / name)
        with writing(target / MANIFEST):
            (tmp / MANIFEST).write_text(json.dumps({"files": files, **info}, indent=2))
        prev = target.with_name(target.name + ".prev")
        if prev.exists():
            shutil.rmtree(prev)
        if target.exists():
            os.replace(target, prev)
        os.replace(tmp, target)
        if prev.exists():
            shutil.rmtree(prev)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(path: Path) -> Path | None:
    """A resumable checkpoint at `path`: a run dir (→ checkpoints/last), or the checkpoint dir itself."""
    path = Path(path)
    for cand in (path, path / "checkpoints" / "last", path.with_name(path.name + ".prev"), path / "checkpoints" / "last.prev"):
        if (cand / MANIFEST).is_file():
            return cand
    return None


def checkpoint_file(folder: Path, name) -> Path:
    """`folder/name` for a file name read from a manifest, which must stay inside `folder`: a plain
    file name (no absolute path, no `..`, no sub-folder), not a symlink that leaves the folder."""
    where = Path(folder) / MANIFEST
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise CheckpointError(f"{where}: file name {name!r} is not a plain file name inside {folder} "
                              "(absolute paths, '..' and sub-folders are refused: a checkpoint reads only its own files)")
    f = Path(folder) / name
    try:
        inside = f.resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise CheckpointError(f"{where}: {name!r} is a link that leaves {folder} (to {os.path.realpath(f)}); refusing to read it")
    return f


def load_object(f: Path):
    """A pickled checkpoint object, loaded with `weights_only=True`; anything else is refused."""
    import pickle

    try:
        return torch.load(f, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{f}: refused on purpose: it holds a pickled object{what} other than tensors and plain "
                              "containers, and unpickling it could run code. sparse-ft never writes such an object into a "
                              "checkpoint: this file was altered or comes from elsewhere; start over with trainer.resume=never") from None


def read_manifest(path: Path) -> dict:
    """The checkpoint folder's manifest.json, checked for its structure (no file is read)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / MANIFEST}: unreadable checkpoint manifest ({err})") from err
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or not all(isinstance(d, str) for d in files.values()):
        raise CheckpointError(f"{path / MANIFEST}: not a checkpoint manifest (it needs \"files\": {{name: sha256}}, "
                              f"got {json.dumps(manifest)[:200]}); the checkpoint is damaged: start over with trainer.resume=never")
    lacking = [name for name in LAST_FILES if name not in files]
    if lacking:
        raise CheckpointError(f"{path / MANIFEST}: lists no {', '.join(lacking)} (it lists {sorted(files)}); "
                              "the checkpoint is damaged: start over with trainer.resume=never")
    return manifest


def read_checkpoint_dir(path: Path) -> tuple[dict, dict, dict]:
    """Verify every file against the manifest, then load: (tensors by file, objects by file, info)."""
    path = Path(path)
    manifest = read_manifest(path)
    files = manifest["files"]
    tensors, objects = {}, {}
    for name, digest in files.items():
        f = checkpoint_file(path, name)
        if not f.is_file():
            raise CheckpointError(f"{f}: missing from the checkpoint")
        if _sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch — the checkpoint is truncated or corrupted; refusing to resume from it")
        if name.endswith(".safetensors"):
            tensors[name] = load_file(str(f))
        else:
            objects[name] = load_object(f)
    info = {k: v for k, v in manifest.items() if k != "files"}
    return tensors, objects, info


# --- the typed layout of checkpoints/last -----------------------------------------------------

TRAINER_STATE = "trainer_state.pt"
MODEL_FILE = "model.safetensors"
EARLY_STOPPING_START = {"evals_without_improvement": 0, "stopped_early_at_step": None}


@dataclass
class TrainerCheckpoint:
    """`trainer_state.pt`: the loop's position and everything besides the weights a resume needs.
    On disk it is a plain dict (keys in this order, `workers` only when present), loaded with
    `weights_only=True`; the key strings never change, so old checkpoints still resume.

    Callback state: `best_method` and `early_stopping` are top-level keys (where the trainer kept
    them before they became callbacks); every other callback's state is under `callbacks` by its
    `state_key` (`callback_state` / `with_callback_states` hide the difference)."""

    state: dict  # TrainState as a dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    method: dict  # Method.state_dict()
    rng: dict
    job: dict = field(default_factory=dict)  # what the job keeps besides the loop (finished stages)
    best_method: dict | None = None
    early_stopping: dict = field(default_factory=lambda: dict(EARLY_STOPPING_START))
    callbacks: dict = field(default_factory=dict)
    workers: list | None = None  # a local-SGD sync round: each rank's own WORKER_KEYS, one entry per rank

    ORDER = ("state", "optimizer", "scheduler", "scaler", "method", "best_method", "rng", "job", "early_stopping", "callbacks", "workers")
    TOP_LEVEL_CALLBACK_KEYS = ("best_method", "early_stopping")

    def to_object(self) -> dict:
        obj = {k: getattr(self, k) for k in self.ORDER}
        if obj["workers"] is None:
            del obj["workers"]
        return obj

    @classmethod
    def from_object(cls, obj: dict, where: str = TRAINER_STATE) -> "TrainerCheckpoint":
        if not isinstance(obj, dict):
            raise CheckpointError(f"{where}: not a trainer state (a dict), got {type(obj).__name__}")
        missing = [k for k in ("state", "optimizer", "scheduler", "scaler", "method", "rng") if k not in obj]
        if missing:
            raise CheckpointError(f"{where}: lacks {', '.join(missing)}; the checkpoint is damaged: start over with trainer.resume=never")
        known = {k: obj[k] for k in cls.ORDER if obj.get(k) is not None}  # older checkpoints lack the later keys
        return cls(**known)

    def callback_state(self, key: str):
        """The saved state of the callback whose `state_key` is `key` (None: not in this checkpoint)."""
        if key in self.TOP_LEVEL_CALLBACK_KEYS:
            return getattr(self, key)
        return (self.callbacks or {}).get(key)

    def has_callback_state(self, key: str) -> bool:
        return key in self.TOP_LEVEL_CALLBACK_KEYS or key in (self.callbacks or {})

    def with_callback_states(self, states: dict) -> "TrainerCheckpoint":
        """This checkpoint with the callbacks' states (`state_key` -> state) put where they belong."""
        for key, value in states.items():
            if key in self.TOP_LEVEL_CALLBACK_KEYS:
                setattr(self, key, value)
            else:
                self.callbacks[key] = value
        return self

    def worker_part(self) -> dict:
        """What differs between the ranks of a local-SGD run between two syncs (WORKER_KEYS)."""
        return {k: getattr(self, k) for k in WORKER_KEYS}

    def own(self, rank: int) -> dict:
        """This rank's loop state, optimizer and RNG (a local-SGD round keeps one per rank)."""
        mine = self.worker_part()
        return {**mine, **self.workers[rank]} if self.workers else mine

    @property
    def stages_done(self) -> list[dict]:
        return list((self.job or {}).get("stages", []))


@dataclass
class Resume:
    """A verified `checkpoints/last` a run continues from."""

    path: str
    weights: dict  # model.safetensors
    trainer: TrainerCheckpoint
    info: dict  # the manifest's entries besides its file list (step, epoch, stage, config)
    tensors: dict = field(default_factory=dict)  # every safetensors file by name (best.safetensors, ...)

    @property
    def step(self) -> int:
        return int(self.info.get("step", 0))

    @property
    def stage(self) -> int:
        return int(self.info.get("stage", 0))


def read_resume(path: Path) -> Resume:
    """Verify and load `path` (a checkpoint folder) as a Resume; CheckpointError names what is wrong."""
    tensors, objects, info = read_checkpoint_dir(path)
    trainer = TrainerCheckpoint.from_object(objects[TRAINER_STATE], str(Path(path) / TRAINER_STATE))
    return Resume(path=str(path), weights=tensors[MODEL_FILE], trainer=trainer, info=info, tensors=tensors)


def write_last(target: Path, weights: dict, trainer: TrainerCheckpoint, extra_tensors: dict, info: dict) -> None:
    """`checkpoints/last/` (atomic, with its manifest): the weights, the extra safetensors files
    (`best.safetensors`) and `trainer_state.pt`."""
    write_checkpoint_dir(target, {MODEL_FILE: weights, **extra_tensors}, {TRAINER_STATE: trainer.to_object()}, info)


def kept_checkpoint(checkpoint_dir: Path | None) -> str:
    """What a failed run leaves to resume from, for its error message."""
    last = Path(checkpoint_dir) / "last" if checkpoint_dir is not None else None
    if last is not None and (last / MANIFEST).is_file():
        try:
            step = json.loads((last / MANIFEST).read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            step = None
        return f"the last checkpoint{'' if step is None else f' (step {step})'} is kept in {last}"
    return "no checkpoint was written before it (see trainer.checkpoint_every)"
