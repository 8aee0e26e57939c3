"""One process per run directory, and a run directory left as it was when a job is refused
before it starts.

- `RunDirLock`: an exclusive `fcntl.flock` on `<run dir>/.lock` for the job's life (rank 0 only;
  the OS releases it on any exit, kill -9 included). The file records the holder's PID, host and
  start time; a second process fails at once naming them. A lock file left by a dead process is
  taken over (flock is free), and the log says so.
- Hydra writes `.hydra/{config,hydra,overrides}.yaml` (and opens `run.log`) before our code runs.
  `snapshot()` (called by the `sparse_ft.jobs.hydra_callbacks.GuardRunDirs` Hydra callback before Hydra
  writes anything) keeps those files' old bytes, so a job refused before it starts (a completed
  run relaunched, a run directory in use, a resume with other settings, a config error) can put
  them back (`restore`) or, when Hydra created the directory for this launch, remove it
  (`discard`). Without the callback (a launcher running jobs in other processes) a directory
  holding nothing but Hydra's files counts as created by this launch; an older one keeps
  Hydra's rewritten `.hydra/` files.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError

log = logging.getLogger("sparse_ft.jobs.entry")

LOCK_FILE = ".lock"
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
LAUNCH_FILES = frozenset({*HYDRA_FILES, "run.log", LOCK_FILE})  # what a launch writes before the job body starts


class RunDirBusy(ConfigError):
    """Another live process holds the run directory's lock."""

    def __init__(self, run_dir: Path, holder: dict):
        self.holder = holder
        who = f"PID {holder.get('pid', '?')}" + (f" on {holder['host']}" if holder.get("host") else "")
        since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder['started']))}" if holder.get("started") else ""
        if holder.get("pid") and holder.get("host") == socket.gethostname() and not pid_alive(int(holder["pid"])):
            since += "; that PID has ended, so a process it started (a data-loader worker) still holds the lock"
        super().__init__("hydra.run.dir", f"{run_dir} is in use by another run ({who}{since}; lock file {Path(run_dir) / LOCK_FILE}): "
                                          "wait for it to end, or give this run another directory")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


class RunDirLock:
    """`acquire()` takes the lock or raises RunDirBusy; `release()` (or process exit) frees it.
    `forget()` puts the lock file back as it was (removed if this process created it), for a job
    refused before it starts in a directory it must not change."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None
        self.previous: bytes | None = None  # the lock file's bytes before this process wrote its own
        self.earlier: dict = {}

    def acquire(self) -> None:
        try:
            self.previous = self.path.read_bytes()
        except OSError:
            self.previous = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise RunDirBusy(self.run_dir, holder) from None
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.earlier = read_holder(fd)  # a stale record (its process ended): `note_takeover` says so once the job goes ahead
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)

    def note_takeover(self) -> None:
        old = self.earlier
        if old.get("pid") and old["pid"] != os.getpid():
            alive = old.get("host") == socket.gethostname() and pid_alive(int(old["pid"]))
            log.info("%s: stale lock of PID %s%s taken over (%s)", self.path, old["pid"], f" on {old['host']}" if old.get("host") else "",
                     "its lock was free" if alive else "that process has ended")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor frees the flock
            self.fd = None

    def forget(self) -> None:
        """Release, leaving the lock file as it was before `acquire`."""
        if self.fd is None:
            return
        try:
            if self.previous is None:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, self.previous, 0)
        finally:
            self.release()


def read_holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


# --- what a launch found in the run directory -------------------------------------------------

@dataclass
class Snapshot:
    existed: bool
    files: dict[str, bytes | None] = field(default_factory=dict)  # HYDRA_FILES' bytes (None: absent)
    had_run_log: bool = False
    first_existing_parent: Path | None = None  # empty folders below it that this launch made are removed with the run dir


SNAPSHOTS: dict[str, Snapshot] = {}  # absolute run dir -> what it held before Hydra wrote into it
REFUSED: dict[str, str] = {}  # multirun jobs refused in a directory they left as it was: run dir -> error (the sweep's exit status counts them)


def snapshot(run_dir: Path | str) -> None:
    """Note what `run_dir` holds now (called before Hydra writes its files there)."""
    path = Path(os.path.abspath(run_dir))
    if not path.is_dir():
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        SNAPSHOTS[str(path)] = Snapshot(existed=False, first_existing_parent=parent)
        return
    files = {}
    for name in HYDRA_FILES:
        try:
            files[name] = (path / name).read_bytes()
        except OSError:
            files[name] = None
    SNAPSHOTS[str(path)] = Snapshot(existed=True, files=files, had_run_log=(path / "run.log").exists())


def launch_only(run_dir: Path) -> bool:
    """Does `run_dir` hold nothing but what a launch writes before the job starts?"""
    run_dir = Path(run_dir)
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_dir():
            if rel != ".hydra":
                return False
        elif rel not in LAUNCH_FILES:
            return False
    return True


def detach_run_log(run_dir: Path) -> None:
    """Stop logging into `run_dir` (Hydra's file handler): a refused job writes nothing there."""
    root = Path(os.path.abspath(run_dir))
    for logger in [logging.getLogger(), *[l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)]]:
        for handler in list(logger.handlers):
            name = getattr(handler, "baseFilename", None)
            if name and Path(name).resolve().is_relative_to(root.resolve()):
                logger.removeHandler(handler)
                handler.close()


def leave_as_found(run_dir: Path, created: bool = False, in_use: bool = False, hydra_launch: bool = True) -> str:
    """A job refused before it started: remove `run_dir` when this launch made it (it holds nothing
    else), else put Hydra's files back as they were. `in_use`: another process holds the directory
    (never removed; its run.log is its own). `hydra_launch`: Hydra may have made the directory
    (else only `created` says this launch made it). Returns what was done ("removed" / "restored"
    / "kept")."""
    run_dir = Path(os.path.abspath(run_dir))
    detach_run_log(run_dir)
    snap = SNAPSHOTS.get(str(run_dir))
    if not run_dir.is_dir():
        return "removed"
    new = not in_use and (created or (snap is not None and not snap.existed) or (snap is None and hydra_launch and launch_only(run_dir)))
    if new and launch_only(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        stop = snap.first_existing_parent if snap is not None else None
        parent = run_dir.parent
        while stop is not None and parent != stop and parent.is_relative_to(stop):
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
        return "removed"
    if snap is None or not snap.existed:
        return "kept"
    for name, data in snap.files.items():
        target = run_dir / name
        try:
            if data is None:
                target.unlink(missing_ok=True)
            elif not target.is_file() or target.read_bytes() != data:
                target.write_bytes(data)
        except OSError as err:
            log.warning("could not put %s back as it was: %s", target, err)
    hydra_dir = run_dir / ".hydra"
    if hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
        hydra_dir.rmdir()
    run_log = run_dir / "run.log"
    if not in_use and not snap.had_run_log and run_log.is_file() and run_log.stat().st_size == 0:
        run_log.unlink()  # opened by Hydra's log handler for this launch, nothing in it
    return "restored"
