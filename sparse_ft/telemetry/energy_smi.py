"""nvidia-smi sampler: ONE long-lived ``nvidia-smi --query-gpu=... -lms <ms>`` child process,
read line by line by one reader thread.

Timestamps are taken from the local monotonic clock when a line is read; nvidia-smi's own
``timestamp`` column is only logged. Lines that do not parse are skipped and counted
(``garbage_lines``). The child dying early, printing garbage, or hanging never raises: the
sampler records a ``reason`` and keeps the samples it has.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

QUERY_FIELDS = "timestamp,index,name,utilization.gpu,power.draw,memory.used,power.limit"
N_FIELDS = len(QUERY_FIELDS.split(","))
#: start() waits this long for the first sample line (or the child's exit), so that phases
#: opened right after start() are covered by the sample curve.
FIRST_SAMPLE_WAIT_S = 3.0


@dataclass
class SmiRow:
    timestamp: str
    index: int
    name: str
    util_pct: float | None
    power_w: float | None
    mem_used_mib: float | None
    power_limit_w: float | None


def _value(s: str) -> float | None:
    """A numeric field; ``[N/A]``, ``[Not Supported]``, ``N/A`` … → None; anything else → ValueError."""
    s = s.strip()
    if (s.startswith("[") and s.endswith("]")) or s.upper() in ("N/A", "NA", ""):
        return None
    v = float(s)
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"not a finite number: {s!r}")
    return v


def parse_smi_line(line: str) -> SmiRow | None:
    """Parse one ``--format=csv,noheader,nounits`` line of :data:`QUERY_FIELDS`; None if garbage.

    The name is taken as everything between the index and the last four numeric fields, so a
    name with a comma still parses.
    """
    parts = [p.strip() for p in line.strip().split(",")]
    if len(parts) < N_FIELDS:
        return None
    try:
        index = int(parts[1])
        util, power, mem, limit = (_value(p) for p in parts[-4:])
    except ValueError:
        return None
    if index < 0:
        return None
    name = ", ".join(parts[2:-4])
    if not name:
        return None
    return SmiRow(parts[0], index, name, util, power, mem, limit)


def smi_command(exe: str, interval_s: float, indices: list[int] | None) -> list[str]:
    cmd = [exe, f"--query-gpu={QUERY_FIELDS}", "--format=csv,noheader,nounits",
           "-lms", str(max(1, int(round(interval_s * 1000))))]
    if indices is not None:
        cmd += ["-i", ",".join(str(i) for i in indices)]
    return cmd


def probe_smi(exe: str, indices: list[int] | None, timeout_s: float = 5.0) -> tuple[bool, str]:
    """One-shot ``nvidia-smi --query-gpu=index`` (used by backend=auto): does it see a GPU?"""
    cmd = [exe, "--query-gpu=index", "--format=csv,noheader,nounits"]
    if indices is not None:
        cmd += ["-i", ",".join(str(i) for i in indices)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, errors="replace")
    except subprocess.TimeoutExpired:
        return False, f"nvidia-smi probe timed out after {timeout_s:g}s"
    except OSError as e:
        return False, f"nvidia-smi: {e}"
    ok_lines = [ln for ln in p.stdout.splitlines() if ln.strip().isdigit()]
    if p.returncode != 0 or not ok_lines:
        msg = (p.stdout + p.stderr).strip().splitlines()
        return False, f"nvidia-smi rc={p.returncode}: {msg[-1] if msg else 'no GPU listed'}"
    return True, f"{len(ok_lines)} GPU(s)"


class SmiSampler:
    """Runs the nvidia-smi child and feeds parsed rows to ``sink(t, row)``."""

    def __init__(self, sink: Callable[[float, SmiRow], None], clock: Callable[[], float],
                 interval_s: float, indices: list[int] | None = None, exe: str | None = None):
        self.sink = sink
        self.clock = clock
        self.interval_s = interval_s
        self.indices = indices
        self.exe = exe
        self.garbage_lines = 0
        self.lines = 0
        self.reason: str | None = None
        self.on_tick: Callable[[], None] | None = None  # extra periodic work (RAPL polling)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stderr = None
        self._stopping = False
        self._first = threading.Event()  # set on the first parsed line or when the reader ends

    def start(self) -> tuple[bool, str | None]:
        exe = self.exe or shutil.which("nvidia-smi")
        if not exe:
            return False, "nvidia-smi not on PATH"
        self.exe = exe
        cmd = smi_command(exe, self.interval_s, self.indices)
        try:
            self._stderr = tempfile.TemporaryFile(mode="w+b")  # never a pipe: cannot fill up
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
                text=True, errors="replace", bufsize=1,
                start_new_session=(os.name == "posix"),  # own group: killpg reaps helpers too
            )
        except OSError as e:
            return False, f"nvidia-smi could not be started ({exe}): {e}"
        log.debug("energy: started %s (pid %s)", " ".join(cmd), self._proc.pid)
        self._thread = threading.Thread(target=self._read, name="energy-nvidia-smi", daemon=True)
        self._thread.start()
        if not self._first.wait(FIRST_SAMPLE_WAIT_S):
            log.warning("energy: no nvidia-smi sample within %gs of start", FIRST_SAMPLE_WAIT_S)
        return True, None

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace").strip()
        except Exception:  # noqa: BLE001
            return ""
        return text.splitlines()[-1][:200] if text else ""

    def _read(self) -> None:
        try:
            self._read_lines()
        finally:
            self._first.set()

    def _read_lines(self) -> None:
        proc = self._proc
        first_ts = None
        try:
            for line in iter(proc.stdout.readline, ""):
                t = self.clock()
                if not line.strip():
                    continue
                row = parse_smi_line(line)
                if row is None:
                    self.garbage_lines += 1
                    if self.garbage_lines <= 3:
                        log.warning("energy: skipping unparsable nvidia-smi line: %r", line[:200])
                    continue
                self.lines += 1
                if first_ts is None:
                    first_ts = row.timestamp
                    log.debug("energy: first nvidia-smi sample at %s", first_ts)
                self.sink(t, row)
                self._first.set()
                if self.on_tick is not None:
                    self.on_tick()
        except Exception as e:  # noqa: BLE001 - a dying pipe or a bug must not kill the run
            if not self._stopping:
                self.reason = f"nvidia-smi reader failed: {type(e).__name__}: {e}"
            return
        if not self._stopping:
            try:
                rc = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                rc = None
            tail = self._stderr_tail()
            self.reason = (f"nvidia-smi exited early (rc={rc}) after {self.lines} sample line(s)"
                           + (f": {tail}" if tail else ""))
            log.warning("energy: %s", self.reason)

    def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(proc.pid, signal.SIGTERM)
                else:  # pragma: no cover
                    proc.terminate()
                proc.wait(timeout=3.0)
            except (ProcessLookupError, PermissionError):
                pass
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL) if os.name == "posix" else proc.kill()
                    proc.wait(timeout=3.0)
                except Exception:  # noqa: BLE001
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():  # e.g. a grandchild still holds the pipe: leave it be
                log.warning("energy: nvidia-smi reader thread did not finish")
                return
        if proc is not None and proc.stdout is not None:
            try:
                proc.stdout.close()
            except Exception:  # noqa: BLE001
                pass
        if self._stderr is not None:
            try:
                self._stderr.close()
            except Exception:  # noqa: BLE001
                pass
