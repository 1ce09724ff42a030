"""The agent survives a broker restart: it comes back online and resumes a transfer exactly."""

from __future__ import annotations

import struct
import time
import uuid
from pathlib import Path

import numpy as np

from shared.messages import BenchmarkCmd, PingCmd
from shared.results import BenchmarkResult, from_data
from shared.topics import Topics
from tests.agents import AgentProcess
from tests.brokers import MosquittoProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)


def _stored_chunks(have_file: Path) -> int:
    try:
        raw = have_file.read_bytes()
    except FileNotFoundError:
        return 0
    return sum(b.bit_count() for b in raw[struct.calcsize("!4sIQ") :])


def test_broker_restart_mid_transfer_agent_reconnects_and_asks_only_for_missing_chunks(
    private_broker: MosquittoProcess, model_dir: Path, tmp_path: Path, base_topic: str
) -> None:
    rng = np.random.default_rng(5)
    big_eval = tmp_path / "eval.npz"
    np.savez(
        big_eval,
        x=rng.standard_normal((400, 1, 8, 8)).astype(np.float32),
        y=rng.integers(0, 10, 400),
    )
    device_id = f"dev-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "agent"
    topics = Topics(base_topic)
    agent = AgentProcess(
        private_broker.url, device_id, data_dir, base_topic, ["--xfer-retry-s", "0.5"]
    )
    host = MiniHost(private_broker.url, base_topic)
    try:
        agent.start()
        agent.wait_online()
        host.start()
        model = host.offer(model_dir / "float.tflite", "tflite")
        eval_data = host.offer(big_eval, "npz", "data")
        total = -(-eval_data.size_bytes // 1024)
        kept = 12
        host.chunk_filter = lambda sha, index: sha != eval_data.sha256 or index < kept
        cmd_id = host.send(
            device_id,
            "benchmark",
            BenchmarkCmd(
                job_id="rc",
                model=model,
                eval_data=eval_data,
                chunk_size=1024,
                eval_limit=20,
                **FAST,
            ),
        )
        have = data_dir / "partial" / f"{eval_data.sha256}.have"
        host.wait_for(lambda: _stored_chunks(have) == kept, 30, "first chunks stored")

        before_restart = time.time()
        private_broker.restart()  # SIGKILL + start: no retained state survives (persistence off)
        host.chunk_filter = None
        host.wait_for(lambda: host.connections >= 2, 30, "MiniHost reconnect")
        host.wait_for(
            lambda: host.retained.get(topics.status(device_id)) == b"online",
            30,
            "agent back online",
        )
        assert topics.birth(device_id) in host.retained  # birth re-published on reconnect

        result = from_data(result_of(host.wait_final(cmd_id, 60)), BenchmarkResult)
        asked = host.requested_indices(eval_data.sha256, device_id, since=before_restart)
        assert set(asked) == set(range(kept, total))
        assert result.transfers[1].chunks_written == total  # one agent run wrote them all
        ping = host.send(device_id, "ping", PingCmd())
        assert host.wait_final(ping, 10).status == "ok"
    finally:
        host.stop()
        agent.terminate()
