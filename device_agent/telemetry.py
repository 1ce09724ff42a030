"""Board state: CPU, memory, temperature, throttling and frequency, read with psutil and sysfs.

Used for the periodic telemetry message and, inside the benchmark worker, for the board state
before and after a run. Every probe tolerates a board that does not expose it (returns None).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import psutil

from shared.messages import Telemetry

logger = logging.getLogger(__name__)

_THERMAL_ZONES = Path("/sys/class/thermal")
# Raspberry Pi firmware exposes the get_throttled bit field here (same as `vcgencmd get_throttled`).
_PI_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
_MB = 1024 * 1024


def temperature_c() -> float | None:
    try:
        sensors = psutil.sensors_temperatures()  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        sensors = {}
    for name in ("cpu_thermal", "coretemp", "k10temp", "soc_thermal", "cpu-thermal", "acpitz"):
        for reading in sensors.get(name, []):
            if reading.current:
                return round(float(reading.current), 1)
    for reading_list in sensors.values():
        for reading in reading_list:
            if reading.current:
                return round(float(reading.current), 1)
    try:
        for zone in sorted(_THERMAL_ZONES.glob("thermal_zone*/temp")):
            return round(int(zone.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        pass
    return None


def throttled() -> bool | None:
    """True when the board reports under-voltage or frequency capping now (Pi firmware bits 0-3)."""
    try:
        value = int(_PI_THROTTLED.read_text().strip(), 16)
    except (OSError, ValueError):
        return None
    return bool(value & 0xF)


def cpu_freq_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, FileNotFoundError):
        return None
    return round(float(freq.current), 1) if freq and freq.current else None


def load_avg_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def board_state() -> dict[str, Any]:
    """A snapshot recorded before and after a benchmark."""
    return {
        "temperature_c": temperature_c(),
        "throttled": throttled(),
        "cpu_freq_mhz": cpu_freq_mhz(),
        "load_avg_1m": load_avg_1m(),
    }


class TelemetrySampler:
    """Builds Telemetry bodies; cpu_percent is measured between consecutive samples."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)

    def sample(self, active_sha256: str | None = None) -> Telemetry:
        mem = psutil.virtual_memory()
        return Telemetry(
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            mem_used_mb=round((mem.total - mem.available) / _MB, 1),
            mem_total_mb=round(mem.total / _MB, 1),
            agent_rss_mb=round(self._process.memory_info().rss / _MB, 1),
            temperature_c=temperature_c(),
            throttled=throttled(),
            cpu_freq_mhz=cpu_freq_mhz(),
            load_avg_1m=load_avg_1m(),
            active_sha256=active_sha256,
        )
