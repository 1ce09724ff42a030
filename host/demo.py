"""``edgetailor demo``: the whole loop on one machine with nothing but the Python install.

It starts the embedded broker (amqtt) on a free port and a SQLite store in the demo folder, then
launches local agents as separate processes, each with its own CPU *profile*: a runtime thread
count, a CPU affinity for its benchmark worker, and, where the machine allows it, a CPU-time quota
through a cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; the agent and its worker share it).
Where no cgroup can be made (not root, no cpu controller), the profile falls back to threads and
affinity and its label says so: every figure is a real measurement of that constrained process,
labelled with the constraint that was really applied.

Then it trains the digits CNN, runs a campaign (host.campaign) over a small search space with all
four technique families, selects per device, deploys each device's choice,
writes the HTML report and prints the choice per device. Last it starts the host service
(host.service) on the demo's broker and database, checks that its dashboard lists every agent, and
prints the dashboard's address; with ``serve`` it keeps all of it running until Ctrl-C. Agents,
cgroups, the service and the broker are always cleaned up, whatever happens.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from host.broker import EmbeddedBroker
from host.campaign import CampaignRunner, CampaignSpec, new_campaign_id, write_campaign_report
from host.cli.progress import LiveProgress
from host.deploy import deploy_selection
from host.errors import HostError
from host.fleet import Fleet
from host.service.service import Service, ServiceConfig
from host.store import Store
from host.store.campaigns import CampaignStore
from host.store.service import ServiceStore

logger = logging.getLogger(__name__)

DEFAULT_CONSTRAINTS: tuple[str, ...] = ("accuracy_drop<=0.02",)
# The digits CNN at 4x width: ~10 M MACs, about 0.3 ms per inference on one x86 core, so the
# profiles' CPU limits show in the figures rather than drowning in timer noise (width 1 runs ~15 us).
DEFAULT_MODEL = "builtin:digits_cnn?width=4"
# A short period spreads the throttling over many small slices instead of one long stall per
# 100 ms, which is closer to what a slower core looks like to a millisecond-scale model.
CFS_PERIOD_US = 20_000
REPO_ROOT = Path(__file__).resolve().parents[1]
_CGROUP_V2_ROOT = Path("/sys/fs/cgroup")
_CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


class DemoError(HostError):
    """The demo could not set up its broker, agents or campaign."""


# --------------------------------------------------------------------------------------------------
# CPU quotas.


@dataclass
class CpuQuotaGroup:
    """One cgroup that caps the CPU time of the processes put in it."""

    path: Path
    version: int
    cpus: float

    def add(self, pid: int) -> bool:
        """Move ``pid`` in (its later children inherit it); True when /proc confirms it."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")
        try:
            membership = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return f"/{self.path.name}\n" in membership or f"/{self.path.name}" in membership

    def remove(self) -> None:
        # A cgroup can only be removed once empty; the agents were just stopped.
        for _ in range(20):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        logger.warning("could not remove the cgroup %s (still in use?)", self.path)

    def label(self) -> str:
        return f"cgroup v{self.version} quota {self.cpus:g} CPU"


def make_cpu_quota(
    name: str, cpus: float, period_us: int = CFS_PERIOD_US
) -> tuple[CpuQuotaGroup | None, str]:
    """A cgroup limited to ``cpus`` CPUs' worth of time (in periods of ``period_us``), or
    (None, why not)."""
    quota_us = max(1000, int(period_us * cpus))
    v2_controllers = _CGROUP_V2_ROOT / "cgroup.controllers"
    try:
        if v2_controllers.is_file() and "cpu" in v2_controllers.read_text().split():
            subtree = _CGROUP_V2_ROOT / "cgroup.subtree_control"
            if "cpu" not in subtree.read_text().split():
                subtree.write_text("+cpu\n")
            path = _CGROUP_V2_ROOT / name
            path.mkdir(exist_ok=True)
            (path / "cpu.max").write_text(f"{quota_us} {period_us}\n")
            return CpuQuotaGroup(path, 2, cpus), ""
        if (_CGROUP_V1_CPU / "cpu.cfs_quota_us").is_file():
            path = _CGROUP_V1_CPU / name
            path.mkdir(exist_ok=True)
            (path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
            return CpuQuotaGroup(path, 1, cpus), ""
    except OSError as exc:
        return None, f"no cgroup ({exc.strerror or exc})"
    return None, "no cgroup cpu controller on this machine"


# --------------------------------------------------------------------------------------------------
# Agent profiles.


@dataclass(frozen=True)
class AgentProfile:
    device: str
    threads: int
    cpus: tuple[int, ...] | None  # affinity of the benchmark worker; None: every CPU
    cpu_quota: float | None  # CPUs' worth of time, applied with a cgroup where possible

    def describe(self) -> str:
        affinity = "all CPUs" if self.cpus is None else "CPU " + ",".join(map(str, self.cpus))
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}, {affinity}"


def default_profiles(count: int, cpu_count: int | None = None) -> list[AgentProfile]:
    """Distinct profiles: the whole machine, one core, then one core under shrinking quotas."""
    cores = max(1, cpu_count or os.cpu_count() or 1)
    shapes: list[tuple[str, int, tuple[int, ...] | None, float | None]] = [
        ("edge-full", min(cores, 4), None, None),
        ("edge-1core", 1, (0,), None),
        ("edge-quarter", 1, ((cores - 1),), 0.25),
        ("edge-half", 1, (0,), 0.5),
        ("edge-tenth", 1, ((cores - 1),), 0.1),
    ]
    profiles = []
    for index in range(count):
        name, threads, cpus, quota = shapes[index % len(shapes)]
        if index >= len(shapes):
            name = f"{name}-{index // len(shapes) + 1}"
        profiles.append(AgentProfile(name, threads, cpus, quota))
    return profiles


@dataclass
class DemoAgent:
    profile: AgentProfile
    proc: subprocess.Popen[bytes]
    data_dir: Path
    label: str
    group: CpuQuotaGroup | None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_agent(profile: AgentProfile, broker_url: str, base_topic: str, root: Path) -> DemoAgent:
    data_dir = root / "agents" / profile.device
    data_dir.mkdir(parents=True, exist_ok=True)
    group: CpuQuotaGroup | None = None
    note = ""
    if profile.cpu_quota is not None:
        group, note = make_cpu_quota(
            f"edgetailor-demo-{os.getpid()}-{profile.device}", profile.cpu_quota
        )
    command = [
        sys.executable, "-m", "device_agent.cli", "--broker", broker_url, "--id", profile.device,
        "--data-dir", str(data_dir), "--base-topic", base_topic, "--threads", str(profile.threads),
        "--telemetry-interval", "2", "--outbox-retry-s", "2", "--tag", "demo=local",
        "--tag", f"profile={profile.describe()}",
    ]  # fmt: skip
    if profile.cpus is not None:
        command += ["--cpu-affinity", ",".join(map(str, profile.cpus))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    with open(data_dir / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    label = profile.describe()
    if profile.cpu_quota is not None:
        if group is not None:
            try:
                confirmed = group.add(proc.pid)
            except OSError as exc:
                confirmed = False
                note = f"could not join the cgroup ({exc.strerror or exc})"
            if confirmed:
                label += f", {group.label()}"
            else:
                group.remove()
                group = None
        if group is None:
            label += f", quota {profile.cpu_quota:g} CPU NOT applied: {note or 'unavailable'}"
    return DemoAgent(profile, proc, data_dir, label, group)


# --------------------------------------------------------------------------------------------------
# The demo.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DASHBOARD_PORT = 8000  # the service's own default, where it is free


def _dashboard_port(requested: int | None) -> int:
    if requested:
        return requested
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DASHBOARD_PORT))
        except OSError:
            return _free_port()
    return DASHBOARD_PORT


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def dashboard_service(
    broker_url: str, base_topic: str, out: Path, port: int | None
) -> Iterator[dict[str, Any]]:
    """``edgetailor serve`` in this process, on the demo's broker and database, for as long as the
    block runs: yields the dashboard's address (with a fresh token in its fragment) and the
    devices its API lists, read back over HTTP as a browser would."""
    import httpx
    import uvicorn

    port = _dashboard_port(port)
    service = Service(
        ServiceConfig(
            broker=broker_url, db=f"sqlite:///{out / 'edgetailor.db'}", port=port,
            base_topic=base_topic, home=out, log_level="warning",
        )
    )  # fmt: skip
    # A token of the demo's own; the others (an earlier demo's) stop working.
    token = ServiceStore(service.store).new_token(revoke_others=True)
    server = uvicorn.Server(
        uvicorn.Config(service.app, host="127.0.0.1", port=port, log_level="warning",
                       access_log=False)
    )  # fmt: skip
    thread = threading.Thread(target=server.run, name="dashboard", daemon=True)
    try:
        service.start()
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DemoError(
                    f"the dashboard did not start on 127.0.0.1:{port} (port in use? try --port)"
                )
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        with httpx.Client(
            base_url=url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            page = client.get("/")
            devices = client.get("/api/v1/devices").json()
        if page.status_code != 200 or "edgetailor" not in page.text:
            raise DemoError(f"the dashboard at {url} answered {page.status_code}")
        yield {
            "url": url,
            "login_url": f"{url}#token={token}",
            "token": token,
            "devices": sorted(d["device_id"] for d in devices if d["online"]),
        }
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(timeout=10)
        service.stop()


def serve_until_interrupted() -> None:
    """Block until Ctrl-C (or SIGTERM, which cleans up the same way)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """amqtt and litert log at INFO/WARNING about routine things; keep the demo's output readable."""
    # asyncio: amqtt 0.12 sometimes logs a traceback ("dictionary changed size during iteration")
    # when clients connect at the same moment; the client reconnects and nothing is lost.
    names = ("amqtt", "transitions", "absl", "host.fleet", "torch", "torchao", "asyncio")
    saved = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL if name == "asyncio" else logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _deploy(outcome: dict[str, Any], fleet: Any, store: Any) -> dict[str, Any]:
    """Deploy each device's choice (host.deploy.deploy_selection)."""

    results = deploy_selection(outcome, fleet=fleet, store=store)
    lines = [f"deploy {device}: {info}" for device, info in sorted(dict(results).items())]
    return {"available": True, "results": results, "lines": lines}


def run_demo(
    *,
    agents: int = 3,
    out_dir: str | Path = "demo-out",
    space: str = "demo",
    model: str = DEFAULT_MODEL,
    constraints: tuple[str, ...] = DEFAULT_CONSTRAINTS,
    objective: str = "min_latency",
    console: Any = None,
    quiet: bool = False,
    runs: int = 30,
    min_s: float = 0.5,
    serve: bool = False,
    port: int | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the demo end to end; returns a summary with the campaign outcome and the labels.

    Once the dashboard is up, ``on_ready`` gets the summary (so the CLI prints it before it
    waits); with ``serve`` the service, agents and broker then run until Ctrl-C."""

    console = console or Console(stderr=True)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base_topic = "edgetailor"
    profiles = default_profiles(agents)
    started_agents: list[DemoAgent] = []
    broker = EmbeddedBroker("127.0.0.1", _free_port())
    campaign_id = new_campaign_id()
    with _quiet_logs():
        try:
            broker.start()
            console.log(f"embedded broker on {broker.url}; database {out / 'edgetailor.db'}")
            for profile in profiles:
                agent = start_agent(profile, broker.url, base_topic, out)
                started_agents.append(agent)
                console.log(f"agent {profile.device} (pid {agent.proc.pid}): {agent.label}")
            with (
                Store(f"sqlite:///{out / 'edgetailor.db'}") as store,
                Fleet(broker.url, base_topic, store=store) as fleet,
            ):
                for agent in started_agents:
                    try:
                        fleet.wait_for_device(agent.profile.device, timeout=90)
                    except HostError as exc:
                        log = (agent.data_dir / "agent.log").read_text(errors="replace")[-2000:]
                        raise DemoError(f"{exc}\nits log ends with:\n{log}") from exc
                spec = CampaignSpec(
                    model=model,
                    data="builtin:digits",
                    space=space,
                    devices=tuple(p.device for p in profiles),
                    constraints=constraints,
                    objective=objective,
                    pretrain_epochs=15,
                    runs=runs,
                    min_s=min_s,
                    warmup_s=0.2,
                    job_timeout_s=180.0,
                    offline_deadline_s=60.0,
                    retries=1,
                )
                with LiveProgress(console, transient=quiet) as live:
                    outcome = CampaignRunner(
                        spec,
                        store,
                        fleet,
                        campaign_id=campaign_id,
                        work_dir=out / "campaigns" / campaign_id,
                        progress=live,
                    ).run()
                deploy = _deploy(outcome, fleet, store)
                report = write_campaign_report(CampaignStore(store), campaign_id, out / "report")
            summary: dict[str, Any] = {
                "campaign": campaign_id,
                "out_dir": str(out),
                "report": str(report),
                "profiles": [
                    {
                        "device": a.profile.device,
                        "label": a.label,
                        "threads": a.profile.threads,
                        "cpus": a.profile.cpus,
                        "cpu_quota_requested": a.profile.cpu_quota,
                        "cgroup": a.group.label() if a.group else None,
                        "cgroup_path": str(a.group.path) if a.group else None,
                    }
                    for a in started_agents
                ],
                "timings": outcome["campaign"]["timings"],
                "deploy": deploy,
                "outcome": outcome,
            }
            with dashboard_service(broker.url, base_topic, out, port) as dashboard:
                summary["dashboard"] = {**dashboard, "served": serve}
                if on_ready is not None:
                    on_ready(summary)
                if serve:
                    serve_until_interrupted()
        finally:
            for agent in started_agents:
                agent.stop()
            for agent in started_agents:
                if agent.group is not None:
                    agent.group.remove()
            broker.stop()
    return summary


__all__ = [
    "DEFAULT_CONSTRAINTS",
    "AgentProfile",
    "CpuQuotaGroup",
    "DemoError",
    "dashboard_service",
    "default_profiles",
    "make_cpu_quota",
    "run_demo",
    "start_agent",
]
