"""Acceptance: an .npz bomb against a live `edgetailor serve`. A 3 MB file whose array inflates to
3 GiB is refused in under 2 s, /healthz answers in under 1 s all the while, and the service grows
by less than 100 MB. (These bounds are the acceptance checks the service is built to; the same
refusals in process, without a clock: tests/host/test_uploads.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from bench.npz_bombs import write_npz_bomb
from tests.e2e.serve import ServeProcess

pytestmark = pytest.mark.slow

MIB = 1024**2


@pytest.fixture
def serve(shared_broker_url: str, base_topic: str, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(
        shared_broker_url, base_topic, f"sqlite:///{tmp_path / 'host.db'}", tmp_path / "home"
    )
    yield process
    process.stop()


def test_an_npz_bomb_is_refused_quickly_while_healthz_answers_and_the_service_stays_small(
    serve: ServeProcess, tmp_path: Path
) -> None:
    bomb = write_npz_bomb(tmp_path / "bomb.npz", (768, 1024, 1024))  # 3 GiB of float32 zeros
    assert bomb.stat().st_size < 4 * MIB
    serve.start()
    headers = {"Authorization": f"Bearer {serve.token()}"}
    service = psutil.Process(serve.pid())
    with httpx.Client(base_url=serve.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200  # warm: the first answer is not timed
        baseline = service.memory_info().rss
        peak, health_s, done = baseline, [], threading.Event()

        def watch() -> None:
            nonlocal peak
            with httpx.Client(base_url=serve.url, timeout=30) as probe:
                while not done.is_set():
                    started = time.monotonic()
                    assert probe.get("/healthz").json() == {"status": "ok"}
                    health_s.append(time.monotonic() - started)
                    peak = max(peak, service.memory_info().rss)
                    done.wait(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            started = time.monotonic()
            refused = client.post(
                "/api/v1/artifacts", params={"filename": "eval.npz"},
                content=bomb.read_bytes(), headers=headers,
            )  # fmt: skip
            took = time.monotonic() - started
            done.wait(0.5)  # a little after the answer too: work left behind would show here
        finally:
            done.set()
            watcher.join()
        peak = max(peak, service.memory_info().rss)
        assert refused.status_code == 413, refused.text
        assert refused.json()["error"]["message"].startswith("eval.npz inflates to 3072 MiB")
        assert took < 2.0, took
        assert health_s and max(health_s) < 1.0, health_s
        assert peak - baseline < 100 * MIB, (baseline / MIB, peak / MIB)
        assert client.get("/api/v1/artifacts", headers=headers).json() == []
