"""An .npz decompression bomb against a live `edgetailor serve`, beside an honest .npz of the
same size, in one run.

    python -m bench.uploads [--out bench/results/uploads.json]

The service runs as a subprocess on the embedded broker, with its defaults (uploads up to 2 GiB,
arrays up to 1 GiB once inflated). Each file is uploaded once with an admin token while another
client asks ``/healthz`` every 50 ms and the service's resident memory is sampled; measured per
file: the answer and the seconds to it, the slowest ``/healthz`` answer meanwhile, and the
service's memory at its peak over its memory just before. The honest file (3 MB of random float32,
which deflate cannot shrink) is stored; the bomb (3 MB that inflate to 3 GiB of zeros,
bench/npz_bombs.py) is refused. Goals: the bomb refused within 2 s, ``/healthz`` within 1 s, the
service grown by less than 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.goals import GoalRow
from bench.npz_bombs import write_npz_bomb
from host.broker import EmbeddedBroker

DEFAULT_OUT = Path("bench/results/uploads.json")
MIB = 1024**2
REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(broker: str, home: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = _free_port()
    log = home / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EDGETAILOR_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from host.cli.main import main; main()", "serve",
             "--broker", broker, "--db", f"sqlite:///{home / 'host.db'}", "--port", str(port),
             "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    token = re.search(r"^\s+(et_\S+)$", log.read_text(), re.MULTILINE)
    if token is None:
        proc.terminate()
        raise RuntimeError(f"the service did not start: {log.read_text()[-2000:]}")
    return proc, url, token.group(1)


def measure(url: str, token: str, pid: int, path: Path) -> dict[str, Any]:
    service = psutil.Process(pid)
    probes: list[float] = []
    done = threading.Event()
    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/healthz")
        baseline = service.memory_info().rss
        peak = baseline

        def probe() -> None:
            nonlocal peak
            with httpx.Client(base_url=url, timeout=60) as other:
                while not done.is_set():
                    started = time.monotonic()
                    other.get("/healthz")
                    probes.append(time.monotonic() - started)
                    peak = max(peak, service.memory_info().rss)
                    done.wait(0.05)

        thread = threading.Thread(target=probe)
        thread.start()
        started = time.monotonic()
        answer = client.post(
            "/api/v1/artifacts", params={"filename": path.name}, content=path.read_bytes(),
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        seconds = time.monotonic() - started
        done.wait(0.5)
        done.set()
        thread.join()
    peak = max(peak, service.memory_info().rss)
    return {
        "file": path.name, "file_mb": path.stat().st_size / 1e6, "status": answer.status_code,
        "answer_s": seconds, "healthz_max_s": max(probes), "healthz_probes": len(probes),
        "rss_before_mib": baseline / MIB, "rss_growth_mib": (peak - baseline) / MIB,
    }  # fmt: skip


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="et-bench-uploads-") as tmp:
        root = Path(tmp)
        honest = root / "honest.npz"
        np.savez_compressed(honest, x=np.random.default_rng(0).random((768, 1024), np.float32))
        bomb = write_npz_bomb(root / "bomb.npz", (768, 1024, 1024))
        broker = EmbeddedBroker("127.0.0.1", _free_port()).start()
        proc, url, token = _serve(broker.url, root / "home")
        try:
            rows = [measure(url, token, proc.pid, honest), measure(url, token, proc.pid, bomb)]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            broker.stop()
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "honest": rows[0],
        "bomb": rows[1],
    }


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    honest, bomb = report["honest"], report["bomb"]
    return [
        GoalRow("uploads", "3 MB .npz bomb (3 GiB inflated): seconds to the refusal",
                f"{bomb['answer_s']:.2f} s ({bomb['status']})",
                "< 2 s", bomb["status"] == 413 and bomb["answer_s"] < 2.0,
                baseline=f"honest 3 MB .npz: {honest['answer_s']:.2f} s ({honest['status']})",
                ratio=bomb["answer_s"] / honest["answer_s"]),
        GoalRow("uploads", "slowest /healthz while the bomb is handled",
                f"{bomb['healthz_max_s']:.3f} s", "< 1 s", bomb["healthz_max_s"] < 1.0,
                baseline=f"{honest['healthz_max_s']:.3f} s"),
        GoalRow("uploads", "service memory growth over the bomb",
                f"{bomb['rss_growth_mib']:.1f} MiB", "< 100 MB",
                bomb["rss_growth_mib"] * MIB < 100e6,
                baseline=f"{honest['rss_growth_mib']:.1f} MiB"),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.uploads", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="an .npz bomb beside an honest .npz, one live service")
    for column in ("file", "MB", "answer", "seconds", "slowest /healthz", "memory growth"):
        table.add_column(column)
    for row in (report["honest"], report["bomb"]):
        table.add_row(row["file"], f"{row['file_mb']:.1f}", str(row["status"]),
                      f"{row['answer_s']:.3f}", f"{row['healthz_max_s']:.3f} s",
                      f"{row['rss_growth_mib']:.1f} MiB")  # fmt: skip
    Console().print(table)
    for goal in goal_rows(report):
        Console().print(f"{goal.measure}: {goal.measured} (goal {goal.goal}): {goal.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
