"""Acceptance: a network cut between agent and broker longer than the keepalive shows the device
offline on the host, then online again, and the job that was running when the link died finishes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.commands.bench import poll_benchmark, submit_benchmark, wait_benchmark
from host.fleet import Fleet
from tests.e2e.conftest import AgentFactory, WideArtifacts
from tests.e2e.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

KEEPALIVE_S = 2
SMALL_CHUNK = 16 * 1024


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 1883) as tcp_proxy:
        yield tcp_proxy


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.05)


def test_a_cut_longer_than_the_keepalive_shows_offline_then_online_and_the_job_finishes(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory, proxy: TcpProxy,
    wide_model: WideArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent(
        "board-n", f"mqtt://127.0.0.1:{proxy.port}",
        extra_args=["--keepalive", str(KEEPALIVE_S), "--xfer-retry-s", "1", "--outbox-retry-s", "1",
                    "--xfer-timeout-s", "60"],
    )  # fmt: skip
    seen: list[bool] = []
    store = f"sqlite:///{tmp_path / 'host.db'}"
    with Fleet(shared_broker_url, base_topic, store=store, chunk_size=SMALL_CHUNK) as fleet:
        fleet.chunks.max_in_flight = 1  # one chunk per round trip: the cut falls mid-transfer
        job = submit_benchmark(
            fleet, "board-n", wide_model.tflite, runs=3, min_s=0.0, timeout_s=120
        )
        _wait(lambda: fleet.chunks.chunks_published > 20, 30, "transfer start")
        proxy.cut()
        cut_at = time.monotonic()
        _wait(lambda: not fleet.devices()["board-n"].online, 4 * KEEPALIVE_S + 5, "offline status")
        seen.append(fleet.devices()["board-n"].online)
        offline_after = time.monotonic() - cut_at
        assert poll_benchmark(fleet, job) is None
        time.sleep(max(0.0, 2 * KEEPALIVE_S - offline_after))  # keep the cut past the keepalive
        proxy.restore()
        _wait(lambda: fleet.devices()["board-n"].online, 30, "online status after the cut")
        seen.append(fleet.devices()["board-n"].online)
        result = wait_benchmark(fleet, job, 120)
    assert seen == [False, True]
    assert KEEPALIVE_S <= offline_after <= 4 * KEEPALIVE_S + 5
    assert result.runs >= 3 and agent.running
    transfer = result.transfers[0]
    assert not transfer.already_stored and transfer.chunks_written == transfer.chunks_total
