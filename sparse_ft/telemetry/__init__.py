"""Run telemetry (energy; memory and time monitors live beside it)."""

from .energy import EnergyMonitor

__all__ = ["EnergyMonitor"]
