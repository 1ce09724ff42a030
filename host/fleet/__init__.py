"""The host's fleet side: MQTT client, device registry and chunk server (commands: host.commands)."""

from __future__ import annotations

from host.fleet.chunk_server import ChunkServer, UnknownArtifactError
from host.fleet.client import Fleet, FleetConnectionError
from host.fleet.devices import DeviceRecord, DeviceRegistry

__all__ = [
    "ChunkServer",
    "DeviceRecord",
    "DeviceRegistry",
    "Fleet",
    "FleetConnectionError",
    "UnknownArtifactError",
]
