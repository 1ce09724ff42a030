"""Waves of a rollout: ``"1,25%,100%"`` is one device, then a quarter of the fleet, then the rest."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from host.errors import ConfigError

DEFAULT_WAVES = "1,25%,100%"
_WAVE_ITEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_waves(text: str) -> list[tuple[float, bool]]:
    """``"1,25%,100%"`` -> [(1, False), (25, True), (100, True)]: a count or a percentage per wave."""
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"--waves {text!r} is empty; give e.g. 1,25%,100%")
    waves = []
    for item in items:
        match = _WAVE_ITEM.match(item)
        if match is None:
            raise ConfigError(
                f"--waves item {item.strip()!r} is neither a device count (e.g. 1) nor a "
                "percentage of the fleet (e.g. 25%); give e.g. 1,25%,100%"
            )
        value, percent = float(match.group(1)), bool(match.group(2))
        if value <= 0 or (percent and value > 100) or (not percent and value != int(value)):
            raise ConfigError(
                f"--waves item {item.strip()!r} must be a whole count >= 1 or a percentage in "
                "(0, 100]; give e.g. 1,25%,100%"
            )
        waves.append((value, percent))
    return waves


def plan_waves(devices: Sequence[str], waves: Sequence[tuple[float, bool]]) -> list[list[str]]:
    """Split ``devices`` (in order) into waves; the last wave takes every device left over."""
    remaining = list(devices)
    plan: list[list[str]] = []
    for index, (value, percent) in enumerate(waves):
        if not remaining:
            break
        size = math.ceil(len(devices) * value / 100.0) if percent else int(value)
        if index == len(waves) - 1:
            size = len(remaining)
        plan.append(remaining[: max(1, size)])
        remaining = remaining[max(1, size) :]
    return plan
