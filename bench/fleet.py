"""Fleet scale: one host driving 1,000 simulated boards, against a bare paho client, side by side.

    python -m bench.fleet [--boards 1000] [--runs 3] [--quick] [--broker mqtt://127.0.0.1:1883]
                          [--out bench/results/fleet.json]

The boards (``bench.simfleet``: real protocol, results synthesized, one thread for all) run in a
process of their own, on a fresh base topic per driver. Each driver runs in a process of its own
too, so its CPU seconds and peak RSS are its alone, and performs one campaign of the same message
pattern: wait until every board is registered (retained birth and ``online``), send each board one
``cmd.benchmark`` naming the same small artifact, serve the chunk requests, take every final result
and acknowledge it with ``cmd.ack``.

- ``reference``: a bare paho client, no host: envelopes built in memory, chunks framed from bytes
  in memory, results kept in a dict. It does what any correct host of this protocol must do and
  nothing more: the boards (like real agents) refuse unsigned commands, so it signs each command
  and ack with an Ed25519 key and a per-board sequence number; it serves chunks to, and takes
  results from, only the board itself (each chunk request and result checked against the key the
  board's birth pinned: anyone on the broker could ask for the artifact or forge a result). It
  ignores progress, and records nothing.
- ``edgetailor``: the host's ``Fleet`` with its SQLite store (a benchmark command recorded per
  board through host.commands.bench.submit_benchmarks, published and signed by the command
  driver, every board message it acts on checked against the board's pinned key, progress noted,
  results stored as they arrive and acknowledged, each checked in the database afterwards: one
  per command).
- ``service``: the same through ``edgetailor serve``'s service (its deployment driver, campaign
  and event loops running beside it), with the HTTP side left out (and so the model zoo, torch
  included, that the service loads at start for the API's checks).

Measured from the first command to the last result: wall time, results per second, the driver's
CPU seconds (user + system over that span) and its peak RSS (whole process). Goal: each within 2x
of the reference (for results per second: at least half). The table shows the median of
``--runs`` runs (3; the drivers interleaved), the JSON every run. ``--quick``: 150 boards, one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.goals import GoalRow

DEFAULT_OUT = Path("bench/results/fleet.json")
ARTIFACT_BYTES = 64 * 1024
GOAL = 2.0
DRIVERS = ("reference", "edgetailor", "service")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- drivers (each in its own process) -----------------------------------------------------------
def _reference(broker: str, base: str, boards: int, artifact: Path) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    from bench.simfleet import write_artifact
    from host.fleet.client import subscription_qos
    from shared.broker_url import parse_broker_url
    from shared.errors import SignatureError
    from shared.messages import (
        AckCmd,
        BenchmarkCmd,
        ChunkRequest,
        Message,
        Response,
        decode,
        encode,
    )
    from shared.signing import Signer, verify_message
    from shared.topics import STATUS_ONLINE, Topics
    from shared.transfer import chunk_bounds, chunk_count, encode_chunk, no_delay

    manifest = write_artifact(artifact, ARTIFACT_BYTES, seed=7)
    data = artifact.read_bytes()
    topics = Topics(base)
    online: set[str] = set()
    births: set[str] = set()
    results: dict[str, bytes] = {}
    registered, finished = threading.Event(), threading.Event()
    signer = Signer.generate()
    sequences: dict[str, int] = {}
    keys: dict[str, str] = {}  # device -> its key, pinned from its first signed birth

    def signed(body: Any, device: str) -> bytes:
        sequences[device] = sequences.get(device, 0) + 1
        return encode(body, device_id=device, signer=signer, seq=sequences[device])

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_socket_open = no_delay

    def authentic(device: str, message: Message) -> bool:
        """Signed by the key the device's birth pinned: chunks and results are taken from the
        device only (anyone on the broker could ask for the artifact or forge a result)."""
        try:
            verify_message(message, trusted={keys[device]}, device_id=device)
        except (KeyError, SignatureError):
            return False
        return True

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = topics.parse(msg.topic)
        device = parsed.device_id
        if device is None:
            return
        if parsed.kind == "status":
            if msg.payload == STATUS_ONLINE:
                online.add(device)
        elif parsed.kind == "birth":
            birth = decode(msg.payload)
            if birth.auth is not None and device not in keys:  # pinned on first use
                keys[device] = verify_message(birth, trusted=None, device_id=device)
                births.add(device)
        elif parsed.kind == "xfer_req":
            message = decode(msg.payload)
            request = message.body
            if isinstance(request, ChunkRequest) and authentic(device, message):
                total = chunk_count(len(data), request.chunk_size)
                for index in request.indices:
                    offset, length = chunk_bounds(len(data), request.chunk_size, index)
                    frame = encode_chunk(
                        request.sha256, index, total, offset, data[offset : offset + length]
                    )
                    c.publish(topics.artifact_chunks(request.sha256), frame, qos=1)
        elif parsed.kind == "resp":
            message = decode(msg.payload)
            body = message.body
            if (
                isinstance(body, Response)
                and body.status != "progress"
                and authentic(device, message)
            ):
                results.setdefault(device, msg.payload)
                ack = signed(AckCmd(msg_ids=[message.msg_id]), device)
                c.publish(topics.cmd(device, "ack"), ack, qos=1)
                if len(results) == boards:
                    finished.set()
        if len(online & births) == boards:
            registered.set()

    client.on_message = on_message
    address = parse_broker_url(broker)
    client.connect(address.host, address.port)
    for topic in topics.host_subscriptions():
        client.subscribe(topic, qos=subscription_qos(topic))  # the host's choice, see there
    client.loop_start()
    if not registered.wait(120):
        raise RuntimeError(f"only {len(online & births)} of {boards} boards registered")
    cpu0, t0 = _cpu_s(), time.monotonic()
    for index, device in enumerate(sorted(online)):
        cmd = BenchmarkCmd(job_id=f"job-{index:06d}", model=manifest, runs=20)
        client.publish(topics.cmd(device, "benchmark"), signed(cmd, device), qos=1)
    if not finished.wait(600):
        raise RuntimeError(f"only {len(results)} of {boards} results")
    wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
    time.sleep(0.5)  # the last acks leave
    client.loop_stop()
    client.disconnect()
    return {"wall_s": wall, "cpu_s": cpu, "results": len(results), "stored": None}


def _edgetailor(
    broker: str, base: str, boards: int, artifact: Path, workdir: Path, *, service: bool
) -> dict[str, Any]:
    from bench.simfleet import write_artifact
    from host.store import Store

    manifest = write_artifact(artifact, ARTIFACT_BYTES, seed=7)
    db = f"sqlite:///{workdir / 'fleet.db'}"
    runner: Any = None
    if service:
        from host.service.service import Service, ServiceConfig

        # The model zoo (torch) is loaded at start for the API, which is left out here.
        config = ServiceConfig(
            broker=broker, db=db, base_topic=base, home=workdir, preload_models=False
        )
        runner = Service(config)
        runner.start()
        fleet, store = runner.fleet, runner.store
    else:
        from host.fleet import Fleet

        store = Store(db)
        fleet = Fleet(broker, base, store=store, outputs_dir=workdir / "outputs")
        fleet.connect()
        fleet.wait_synced(timeout=120, settle_s=0.2)
    try:
        deadline = time.monotonic() + 120
        while True:
            ready = [d for d, r in fleet.devices().items() if r.online and r.birth is not None]
            if len(ready) == boards:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ready)} of {boards} boards registered")
            time.sleep(0.05)
        from host.commands.bench import submit_benchmarks, wait_benchmarks

        cpu0, t0 = _cpu_s(), time.monotonic()
        commands = submit_benchmarks(
            fleet, sorted(ready), artifact, model_manifest=manifest, runs=20
        )
        results = wait_benchmarks(fleet, commands, 600)
        wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
        stored = [c for c in fleet.commands.commands.list(kinds=("benchmark",)) if c.result_json]
        once = (
            len(stored) == boards
            and {c.command_id for c in stored} == set(commands)
            and len({c.response_msg_id for c in stored}) == boards
        )
        time.sleep(0.5)  # the last acks leave
    finally:
        if runner is not None:
            runner.stop()
        else:
            fleet.close()
            store.close()
    return {"wall_s": wall, "cpu_s": cpu, "results": len(results), "stored": len(stored),
            "stored_once": once}  # fmt: skip


def driver_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    artifact = workdir / "model.onnx"
    if args.driver == "reference":
        row = _reference(args.broker, args.base, args.boards, artifact)
    else:
        row = _edgetailor(
            args.broker, args.base, args.boards, artifact, workdir,
            service=args.driver == "service",
        )  # fmt: skip
    row["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(row), flush=True)


# -- the bench ----------------------------------------------------------------------------------
def run_one(driver: str, broker: str, boards: int) -> dict[str, Any]:
    base = f"bench-fleet-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    with tempfile.TemporaryDirectory(prefix="et-fleet-") as tmp:
        sims = subprocess.Popen(
            [sys.executable, "-m", "bench.simfleet", broker, base, str(boards)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert sims.stdout is not None and sims.stdin is not None
            if sims.stdout.readline().strip() != "online":
                raise RuntimeError("the simulated boards did not come online")
            out = subprocess.run(
                [sys.executable, "-m", "bench.fleet", "--driver", driver, "--broker", broker,
                 "--base", base, "--boards", str(boards), "--workdir", tmp],
                capture_output=True, text=True, env=env, timeout=900, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"driver {driver} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            sims.stdin.close()
            board_stats = json.loads(sims.stdout.readline())
        finally:
            if sims.poll() is None:
                sims.terminate()
            sims.wait(30)
    row.update(driver=driver, boards=boards, board_stats=board_stats)
    row["results_per_s"] = row["results"] / row["wall_s"]
    row["cpu_s_per_1000"] = row["cpu_s"] * 1000 / boards
    return row


def _median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's median over the runs (the counts are the same in every run)."""
    row = dict(runs[0])
    for key in ("wall_s", "cpu_s", "peak_rss_mb", "results_per_s", "cpu_s_per_1000"):
        row[key] = statistics.median(r[key] for r in runs)
    row["stored_once"] = all(r.get("stored_once", True) for r in runs)
    row.pop("board_stats", None)
    return row


def _table(rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    ref = next(r for r in rows if r["driver"] == "reference")
    lines = [
        (
            "| driver | boards | wall s | results/s | host CPU s per 1,000 boards | peak RSS MB "
            "| ratios to reference (wall / CPU / RSS) | goal | pass |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for r in rows:
        ratios = {
            "wall": r["wall_s"] / ref["wall_s"],
            "cpu": r["cpu_s"] / ref["cpu_s"],
            "rss": r["peak_rss_mb"] / ref["peak_rss_mb"],
        }
        passed = r["driver"] == "reference" or all(v <= GOAL for v in ratios.values())
        if r.get("stored_once") is False:
            passed = False
        verdicts.append({"driver": r["driver"], "ratios": ratios, "pass": passed})
        ratio_text = " / ".join(f"{v:.2f}" for v in ratios.values())
        lines.append(
            f"| {r['driver']} | {r['boards']} | {r['wall_s']:.2f} | {r['results_per_s']:.0f} | "
            f"{r['cpu_s_per_1000']:.2f} | {r['peak_rss_mb']:.0f} | {ratio_text} | "
            f"{'-' if r['driver'] == 'reference' else f'<= {GOAL:.0f}x'} | "
            f"{'-' if r['driver'] == 'reference' else ('pass' if passed else 'MISS')} |"
        )
    return "\n".join(lines), verdicts


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    """Wall time, host CPU and peak RSS of each driver against the bare paho reference."""
    rows = {r["driver"]: r for r in report["rows"]}
    ref = rows["reference"]
    out: list[GoalRow] = []
    for verdict in report["verdicts"]:
        driver = verdict["driver"]
        if driver == "reference":
            continue
        row = rows[driver]
        for key, label, field, unit in (
            ("wall", "wall time", "wall_s", "s"),
            ("cpu", "host CPU", "cpu_s", "s"),
            ("rss", "peak RSS", "peak_rss_mb", "MB"),
        ):
            ratio = verdict["ratios"][key]
            out.append(
                GoalRow(
                    "fleet",
                    f"{label}, {report['boards']} simulated boards, {driver}",
                    f"{row[field]:.1f} {unit}",
                    f"<= {GOAL:g}",
                    ratio <= GOAL and row.get("stored_once") is not False,
                    baseline=f"{ref[field]:.1f} {unit} (bare paho)",
                    ratio=ratio,
                )
            )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--boards", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="150 boards, one run")
    parser.add_argument("--runs", type=int, default=3, help="runs per driver; medians shown")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--drivers", default=",".join(DRIVERS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--driver", choices=DRIVERS, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        driver_main(args)
        return
    boards = 150 if args.quick else args.boards
    runs = 1 if args.quick else args.runs
    started = time.time()
    drivers = args.drivers.split(",")
    samples: dict[str, list[dict[str, Any]]] = {d: [] for d in drivers}
    for run in range(runs):
        for driver in drivers:  # interleaved: each run has every driver on the same machine state
            print(f"run {run + 1}/{runs} {driver}: {boards} boards ...", flush=True)
            samples[driver].append(run_one(driver, args.broker, boards))
    rows = [_median_row(samples[d]) for d in drivers]
    table, verdicts = _table(rows)
    print(table)
    report = {
        "command": " ".join(
            ["python -m bench.fleet", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "boards": boards,
        "goal": f"each of wall time, host CPU seconds and peak RSS within {GOAL:.0f}x the reference",
        "runs": runs,
        "rows": rows,
        "samples": samples,
        "verdicts": verdicts,
        "seconds": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
