"""The host's fleet side: MQTT client, device registry, chunk server and job tracking."""

from __future__ import annotations

from host.fleet.chunk_server import ChunkServer, UnknownArtifactError
from host.fleet.client import Fleet, FleetConnectionError
from host.fleet.devices import DeviceRecord, DeviceRegistry
from host.fleet.jobs import JobHandle, JobTracker

__all__ = [
    "ChunkServer",
    "DeviceRecord",
    "DeviceRegistry",
    "Fleet",
    "FleetConnectionError",
    "JobHandle",
    "JobTracker",
    "UnknownArtifactError",
]
