"""CPU package energy from Linux powercap / RAPL (``/sys/class/powercap/intel-rapl:*``).

Only *package* domains are summed (their ``name`` file reads ``package-N``); sub-domains
(``core``, ``uncore``, ``dram``) are inside a package already and ``psys`` overlaps it.
``energy_uj`` is a wrapping counter: every read is compared with the previous one and a
decrease is taken as one wrap of ``max_energy_range_uj``. The reader must therefore be
polled more often than the wrap period (~262 kJ: tens of minutes at full load), which the
monitor does from its sampler thread.
"""

from __future__ import annotations

import threading
from pathlib import Path

#: Root of the powercap tree; tests pass their own root to :class:`RaplReader` instead.
RAPL_ROOT = "/sys/class/powercap"


class RaplReader:
    """Cumulative (unwrapped) package energy in microjoules since :meth:`open`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root if root is not None else RAPL_ROOT)
        self.domains: list[str] = []  # domain names, e.g. ["package-0", "package-1"]
        self.error: str | None = None  # why RAPL is unusable (open) or the last read error
        self.read_errors = 0
        self._files: list[tuple[Path, float | None]] = []  # (energy_uj path, max range)
        self._last: list[int] = []
        self._acc_uj = 0.0
        self._lock = threading.Lock()

    def open(self) -> bool:
        """Find readable package domains and take the first reading. False + ``error`` if none."""
        try:
            dirs = sorted(self.root.glob("intel-rapl:*"))
        except OSError as e:  # pragma: no cover - glob on a broken root
            self.error = f"{self.root}: {e}"
            return False
        if not dirs:
            self.error = f"{self.root}/intel-rapl:*: no RAPL domains"
            return False
        problems = []
        for d in dirs:
            try:
                name = (d / "name").read_text().strip()
            except OSError as e:
                problems.append(f"{d / 'name'}: {e.strerror or e}")
                continue
            if not name.startswith("package"):
                continue
            energy = d / "energy_uj"
            try:
                raw = int(energy.read_text().strip())
            except (OSError, ValueError) as e:
                problems.append(f"{energy}: {getattr(e, 'strerror', None) or e}")
                continue
            try:
                max_range: float | None = float((d / "max_energy_range_uj").read_text().strip())
            except (OSError, ValueError):
                max_range = None
            self.domains.append(name)
            self._files.append((energy, max_range))
            self._last.append(raw)
        if not self._files:
            self.error = "; ".join(problems) if problems else f"{self.root}: no package-* RAPL domain"
            return False
        self.error = None
        return True

    @property
    def available(self) -> bool:
        return bool(self._files)

    def read_uj(self) -> float:
        """Energy since :meth:`open` in µJ, summed over package domains; wraps handled.

        A failing read keeps the previous value for that domain (counted in ``read_errors``).
        """
        with self._lock:
            for k, (path, max_range) in enumerate(self._files):
                try:
                    raw = int(path.read_text().strip())
                except (OSError, ValueError) as e:
                    self.read_errors += 1
                    self.error = f"{path}: {getattr(e, 'strerror', None) or e}"
                    continue
                delta = raw - self._last[k]
                if delta < 0:  # the counter wrapped (once, if polled often enough)
                    # unknown range: count only what accrued since the wrap
                    delta = delta + max_range if max_range else raw
                self._acc_uj += delta
                self._last[k] = raw
            return self._acc_uj
