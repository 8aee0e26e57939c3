"""A failed worker's error, for rank 0's summary (distributed jobs under torchrun).

Every rank that fails writes its error to `<run>/worker_errors/rank<r>.json` before it leaves
(the run directory is shared by the ranks, as it is for the checkpoints); rank 0, after its own
failure, merges them into summary.json (`worker_errors`) and, when its own error is only a broken
collective (or torchrun's SIGTERM), waits a few seconds for them and names the failing worker's
error in `error`. See context.py for the job's side of it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..train.preemption import Terminated

log = logging.getLogger("sparse_ft.jobs.entry")


WORKER_ERRORS = "worker_errors"  # <run>/worker_errors/rank<r>.json: a failed rank's error, for rank 0's summary
WORKER_ERROR_SKEW_S = 10.0  # the ranks of one launch start within this (older files are an earlier attempt's)
WORKER_ERROR_WAIT_S = 5.0  # how long rank 0 waits for them after a broken collective (torchrun's SIGKILL comes after 30 s)
PEER_FAILURE_MARKERS = ("peer worker is gone", "Connection closed by peer", "Connection reset by peer", "Broken pipe",
                        "Timed out", "timed out", "Timeout", "NCCL", "gloo", "ProcessGroup")


def is_peer_failure(err: BaseException | None) -> bool:
    """Does this error look like another rank's failure seen from here (a broken or timed-out
    collective, torchrun's SIGTERM) rather than this rank's own?"""
    if err is None:
        return False
    if isinstance(err, Terminated):
        return True
    import torch.distributed as tdist

    if isinstance(err, getattr(tdist, "DistError", ())):
        return True
    return any(m in str(err) for m in PEER_FAILURE_MARKERS)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def record_worker_error(run_dir: Path, rank: int, err: BaseException) -> None:
    """A failing rank's error, for rank 0 (written atomically; never raises)."""
    import traceback

    from ..core.io import atomic_write_text

    try:
        tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        record = {"rank": rank, "error": describe(err), "peer_failure": is_peer_failure(err), "time": time.time(), "traceback": tb[-4000:]}
        atomic_write_text(Path(run_dir) / WORKER_ERRORS / f"rank{rank}.json", json.dumps(record, indent=1))
    except Exception as write_err:  # noqa: BLE001 - the job's own error matters more
        log.warning("could not record rank %d's error in %s: %s", rank, run_dir / WORKER_ERRORS, write_err)


def worker_errors(run_dir: Path, since: float, wait_s: float = 0.0) -> list[dict]:
    """The other ranks' error records written since `since` (seconds since the epoch), waiting
    up to `wait_s` for one that is a worker's own error (not just a broken collective), which
    then comes first."""
    folder = Path(run_dir) / WORKER_ERRORS
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for path in sorted(folder.glob("rank*.json")) if folder.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("time", 0) >= since:
                found.append(record)
        if any(not r.get("peer_failure") for r in found) or time.monotonic() >= deadline:
            return sorted(found, key=lambda r: (bool(r.get("peer_failure")), r.get("time", 0)))
        time.sleep(0.1)


def clear_worker_errors(run_dir: Path, now: float) -> None:
    """Rank 0 at the start of a distributed job: an earlier attempt's error records go."""
    folder = Path(run_dir) / WORKER_ERRORS
    for path in folder.glob("rank*.json") if folder.is_dir() else []:
        try:
            if path.stat().st_mtime < now - WORKER_ERROR_SKEW_S:  # an earlier attempt's
                path.unlink()
        except OSError:
            pass


def merge_worker_errors(run_dir: Path, summary: dict, writer, error: BaseException | None, started_at: float) -> None:
    """Rank 0 after a failure: the other ranks' errors into the summary. When its own error
    is a broken collective or torchrun's SIGTERM, the failing worker's error is the cause."""
    peer = is_peer_failure(error)
    found = worker_errors(run_dir, started_at - WORKER_ERROR_SKEW_S, WORKER_ERROR_WAIT_S if peer else 0.0)
    if not found:
        if peer:
            summary["error"] = f"{summary.get('error')} (no other rank recorded an error of its own: a worker was killed or exited hard; see torchrun's output)"
            writer.write_summary(summary)
        return
    summary["worker_errors"] = [{k: r.get(k) for k in ("rank", "error", "peer_failure")} for r in found]
    cause = found[0]  # a worker's own error sorts first; one that only saw a broken collective blames nobody
    if peer and not cause.get("peer_failure"):
        summary["status"] = "failed"
        summary["error"] = f"worker rank {cause['rank']} failed: {cause['error']} (rank 0 saw: {summary.get('error')})"
        log.error("%s", summary["error"])
    writer.write_summary(summary)
