"""One host replica for the scale-out test: ``edgetailor serve``'s service without its HTTP side.

    python -m tests.host.replica BROKER BASE DB HOME GROUP ARTIFACT MANIFEST_JSON DEVICES READY KEY

Starts the service (fleet, deployment driver, campaign jobs) as one replica of ``GROUP``, signing
with the host key KEY that every replica of the database shares, sends a benchmark of ARTIFACT to
each of the comma-separated DEVICES, writes READY, then serves until SIGTERM (or until the test
SIGKILLs it).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import msgspec

from host.commands.bench import submit_benchmark
from host.service.service import Service, ServiceConfig
from shared.manifest import ArtifactManifest


def main(argv: list[str]) -> None:
    broker, base, db, home, group, artifact, manifest_json, devices, ready, key = argv
    service = Service(
        ServiceConfig(
            broker=broker, db=db, base_topic=base, home=Path(home), share_group=group,
            signing_key=key,
        )
    )  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service.start()
    manifest = msgspec.json.decode(manifest_json, type=ArtifactManifest)
    for device_id in devices.split(","):
        service.fleet.wait_for_device(device_id, 30)
        submit_benchmark(service.fleet, device_id, artifact, model_manifest=manifest, runs=20)
    Path(ready).write_text("submitted\n")
    stop.wait()
    service.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
