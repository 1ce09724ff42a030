"""``edgetailor-agent --check``: what a board's configuration amounts to, before the agent runs.

Each check prints one line (``ok``, ``warn`` or ``FAIL``, what, and what was found); any FAIL makes
the exit code 1. Nothing here changes the data dir beyond a probe file, and the broker is contacted
with a client id of its own, so a check never disturbs an agent that is running.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from device_agent import AGENT_VERSION
from device_agent.config import Settings
from device_agent.lock import DataDirLock
from shared.broker_url import BrokerAddress, TlsOptions, parse_broker_url
from shared.errors import EdgeTailorError
from shared.topics import Topics, check_device_id

CONNECT_TIMEOUT_S = 5.0
_MB = 1024 * 1024


@dataclass
class Report:
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, what: str, detail: str) -> None:
        self.lines.append((status, what, detail))

    @property
    def problems(self) -> int:
        return sum(1 for status, _, _ in self.lines if status == "FAIL")

    def render(self) -> str:
        width = max(len(what) for _, what, _ in self.lines)
        return "\n".join(f"  {s:<5} {w:<{width}}  {d}" for s, w, d in self.lines)


def _readable(path: Path) -> str | None:
    """None when ``path`` is a readable file, else what is wrong with it."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_file():
        return f"{path} is not a file"
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror}"
    return None


def check_config(settings: Settings, report: Report) -> None:
    given = sorted(k for k, source in settings.sources.items() if source != "default")
    file = str(settings.config_file) if settings.config_file else "no config file"
    sources = ", ".join(f"{k} from {settings.sources[k]}" for k in given)
    report.add("ok", "config", f"{file}; {sources}")
    try:
        check_device_id(settings["id"])
        Topics(settings["base_topic"])
        report.add("ok", "device id", f"{settings['id']} (base topic {settings['base_topic']})")
    except EdgeTailorError as exc:
        report.add("FAIL", "device id", str(exc))


def check_data_dir(settings: Settings, report: Report) -> None:
    data_dir: Path = settings["data_dir"]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".check-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as exc:
        report.add(
            "FAIL",
            "data dir",
            f"{data_dir} is not writable ({exc.strerror or exc}); give a directory the agent's "
            "user can write",
        )
        return
    from device_agent.store import DEFAULT_BUDGET_FRACTION, free_bytes

    total = shutil.disk_usage(data_dir).total
    free = free_bytes(data_dir)
    budget = (
        settings["max_store_mb"] * _MB
        if settings["max_store_mb"]
        else total * DEFAULT_BUDGET_FRACTION
    )
    holder = DataDirLock(data_dir).held_by_other()
    in_use = "" if holder is None else f"; in use by a running agent (pid {holder or '?'})"
    status = "ok" if free > 16 * _MB else "warn"
    report.add(
        status,
        "data dir",
        f"{data_dir} (writable; {free / _MB:,.0f} MB free of {total / _MB:,.0f} MB; store budget "
        f"{budget / _MB:,.0f} MB){in_use}",
    )


def check_tls(settings: Settings, broker: BrokerAddress | None, report: Report) -> bool:
    """True when the TLS settings are usable (or not needed)."""
    ca, cert, key = settings["tls_ca"], settings["tls_cert"], settings["tls_key"]
    if ca is None and cert is None and key is None:
        if broker is not None and broker.tls:
            report.add("ok", "tls", "mqtts:// with the system's CA certificates")
        else:
            report.add("ok", "tls", "not used (plain mqtt://)")
        return True
    usable = True
    for what, path in (("tls ca", ca), ("tls cert", cert), ("tls key", key)):
        if path is None:
            continue
        problem = _readable(Path(path))
        if problem:
            report.add("FAIL", what, problem)
            usable = False
    if (cert is None) != (key is None):
        report.add("FAIL", "tls", "tls_cert and tls_key must be given together")
        return False
    if not usable:
        return False
    context = ssl.create_default_context()
    try:
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        report.add("FAIL", "tls", f"the TLS files do not load: {exc}")
        return False
    report.add("ok", "tls", ", ".join(str(p) for p in (ca, cert, key) if p is not None))
    return True


def check_trust_key(settings: Settings, report: Report) -> None:
    path = settings["trust_key"]
    if path is None:
        pinned = Path(settings["data_dir"]) / "trust" / "host.json"
        if pinned.is_file():
            report.add("ok", "trust key", f"none given; the host key pinned in {pinned} is used")
        else:
            report.add(
                "warn", "trust key",
                "none: the first host key that signs a command is pinned (trust on first use); "
                "set trust_key to pin the host's key explicitly",
            )  # fmt: skip
        return
    problem = _readable(Path(path))
    if problem:
        report.add("FAIL", "trust key", problem)
        return
    try:
        from shared.signing import load_public_key

        load_public_key(Path(path))
    except (EdgeTailorError, ValueError, OSError) as exc:
        report.add("FAIL", "trust key", f"{path} is not an Ed25519 public key (PEM): {exc}")
        return
    report.add("ok", "trust key", str(path))


def _tcp_reachable(broker: BrokerAddress) -> str | None:
    try:
        with socket.create_connection((broker.host, broker.port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        from device_agent.agent import _describe_connect_error

        return _describe_connect_error(exc)


def _mqtt_connack(settings: Settings, broker: BrokerAddress) -> str | None:
    """None when the broker accepts an MQTT connection with these credentials, else why not."""
    import paho.mqtt.client as mqtt

    from shared.mqtt import make_client

    outcome: list[str | None] = []
    done = threading.Event()
    tls = TlsOptions(
        ca=str(settings["tls_ca"]) if settings["tls_ca"] else None,
        cert=str(settings["tls_cert"]) if settings["tls_cert"] else None,
        key=str(settings["tls_key"]) if settings["tls_key"] else None,
    )
    try:
        client = make_client(
            f"edgetailor-check-{settings['id']}-{uuid.uuid4().hex[:6]}",
            broker,
            tls,
            reconnect_on_failure=False,
        )
    except EdgeTailorError as exc:
        return str(exc)

    def on_connect(c: mqtt.Client, u: object, f: object, reason: object, p: object) -> None:
        failed = getattr(reason, "is_failure", False)
        outcome.append(f"the broker refused the connection: {reason}" if failed else None)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    client.loop_start()
    try:
        if not done.wait(CONNECT_TIMEOUT_S):
            return f"no MQTT answer (CONNACK) within {CONNECT_TIMEOUT_S:g} s; is this an MQTT port?"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


def check_broker(settings: Settings, tls_ok: bool, report: Report) -> None:
    try:
        broker = parse_broker_url(settings["broker"])
    except EdgeTailorError as exc:
        report.add("FAIL", "broker", str(exc))
        return
    problem = _tcp_reachable(broker)
    if problem:
        report.add("FAIL", "broker", f"{broker} unreachable: {problem}")
        return
    if not tls_ok:
        report.add("FAIL", "broker", f"{broker} listens, but the TLS files above are unusable")
        return
    started = time.monotonic()
    problem = _mqtt_connack(settings, broker)
    if problem:
        report.add("FAIL", "broker", f"{broker}: {problem}")
        return
    elapsed_ms = (time.monotonic() - started) * 1000
    report.add("ok", "broker", f"{broker} accepted an MQTT connection ({elapsed_ms:.0f} ms)")


def _import_probe(module: str) -> str | None:
    """Import a runtime in a fresh interpreter: a runtime built against another numpy crashes."""
    target = f"{module}.interpreter" if _has_submodule(module, "interpreter") else module
    proc = subprocess.run(
        [sys.executable, "-c", f"import importlib; importlib.import_module({target!r})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _has_submodule(module: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{module}.{name}") is not None
    except (ImportError, ValueError):
        return False


def check_runtimes(report: Report, probe: Callable[[str], str | None] = _import_probe) -> None:
    from device_agent.capabilities import runtimes

    found = runtimes()
    if not found:
        report.add(
            "FAIL",
            "runtimes",
            "none installed: install ai-edge-litert (or tflite-runtime with numpy<2) or onnxruntime",
        )
        return
    for info in found:
        problem = probe(info.module)
        what = f"runtime {info.name}"
        if problem:
            report.add("FAIL", what, f"{info.module} {info.version} does not import: {problem}")
        else:
            report.add("ok", what, f"{info.module} {info.version} ({', '.join(info.formats)})")


def check_serve(settings: Settings, report: Report) -> None:
    if not settings["serve"]:
        return
    from device_agent.serve.address import parse_serve_address

    address = parse_serve_address(settings["serve"])
    if address.unix_path is not None and not address.unix_path.parent.is_dir():
        report.add("FAIL", "serve", f"{address}: directory {address.unix_path.parent} is missing")
        return
    report.add("ok", "serve", str(address))


def run_check(settings: Settings) -> int:
    report = Report()
    check_config(settings, report)
    check_data_dir(settings, report)
    try:
        broker: BrokerAddress | None = parse_broker_url(settings["broker"])
    except EdgeTailorError:
        broker = None
    tls_ok = check_tls(settings, broker, report)
    check_trust_key(settings, report)
    check_broker(settings, tls_ok, report)
    check_runtimes(report)
    check_serve(settings, report)
    print(f"edgetailor-agent {AGENT_VERSION} on {os.uname().nodename}:")
    print(report.render())
    if report.problems:
        print(f"{report.problems} problem(s) found: fix them before starting the agent")
        return 1
    print("no problems found")
    return 0
