"""Idle memory of the device agent against a bare paho-mqtt + psutil process, measured side by side.

    python -m bench.footprint [--broker mqtt://127.0.0.1:1883] [--out bench/results/footprint.json]

Both processes connect to the same broker and idle; the RSS of each is sampled over a few seconds
and the median compared. The design goal is an agent at most 1.25x the bare process.

The bare process also does what any agent that checks Ed25519 signatures has to: it loads
``cryptography``'s Ed25519 and PEM code, makes a key, writes and reads it as PEM, signs and
verifies once. The agent must (every command is signed by the host, everything it sends by its own
key), and OpenSSL's library alone is about 9 MB of resident memory, which no agent of this
protocol can shed; without it in the reference the ratio would measure the library, not the
agent. Before signing, the reference was paho-mqtt + psutil alone (23.1 MB against the agent's
28.9 MB, 1.25x: ``bench/results/footprint.json`` of that time); the agent's own overhead above
the reference is what the goal keeps small.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.goals import GoalRow
from shared.broker_url import parse_broker_url

DEFAULT_OUT = Path("bench/results/footprint.json")
GOAL_RATIO = 1.25

BARE_CLIENT = """
import sys, time
import paho.mqtt.client as mqtt
import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
key = Ed25519PrivateKey.generate()
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())
key = serialization.load_pem_private_key(pem, password=None)
key.public_key().verify(key.sign(b"ping"), b"ping")
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[3])
client.connect(sys.argv[1], int(sys.argv[2]))
client.loop_start()
psutil.cpu_percent()
while True:
    time.sleep(1)
"""


def _sample_rss(proc: subprocess.Popen[bytes], settle_s: float, samples: int) -> float:
    time.sleep(settle_s)
    values = []
    for _ in range(samples):
        values.append(psutil.Process(proc.pid).memory_info().rss / 2**20)
        time.sleep(0.25)
    return statistics.median(values)


def measure(broker: str, settle_s: float = 4.0, samples: int = 12) -> dict[str, object]:
    address = parse_broker_url(broker)
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as data_dir:
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_CLIENT, address.host, str(address.port), f"bare-{tag}"]
        )
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "device_agent.cli",
                "--broker",
                broker,
                "--id",
                f"fp-{tag}",
                "--data-dir",
                data_dir,
                "--base-topic",
                f"etbench-{tag}",
                "--log-level",
                "warning",
            ]
        )
        try:
            bare_mb = _sample_rss(bare, settle_s, samples)
            agent_mb = _sample_rss(agent, 0.0, samples)
        finally:
            for proc in (bare, agent):
                proc.terminate()
                proc.wait(timeout=10)
    return {
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "bare_paho_psutil_rss_mb": round(bare_mb, 1),  # with cryptography's Ed25519 (see above)
        "agent_rss_mb": round(agent_mb, 1),
        "agent_overhead_mb": round(agent_mb - bare_mb, 1),
        "ratio": round(agent_mb / bare_mb, 3),
        "goal_ratio": GOAL_RATIO,
    }


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    return [
        GoalRow(
            "footprint",
            "idle agent RSS",
            f"{report['agent_rss_mb']} MB",
            f"<= {report['goal_ratio']}",
            report["ratio"] <= report["goal_ratio"],
            baseline=f"{report['bare_paho_psutil_rss_mb']} MB (bare paho + psutil + Ed25519)",
            ratio=report["ratio"],
        )
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = measure(args.broker)
    print(f"{'process':<28}{'idle RSS (MB)':>14}")
    print(f"{'bare paho + psutil + Ed25519':<28}{result['bare_paho_psutil_rss_mb']:>14}")
    print(f"{'edgetailor-agent':<28}{result['agent_rss_mb']:>14}")
    print(f"ratio {result['ratio']}x (goal <= {GOAL_RATIO}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
