"""The signed pipeline end to end, real agent and real host: a host key rotated with `keys rotate`
reaches an agent that pinned the old key on first use, and a result whose command the host has
no record of is answered "unknown" and dropped by the agent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from host.commands import CommandStore, rotate_key
from host.commands.bench import submit_benchmark, wait_benchmark
from host.commands.keys import make_key
from host.commands.models import CommandRow
from host.fleet import Fleet
from host.store import Store
from shared.messages import PingCmd
from tests.e2e.conftest import AgentFactory, DigitsArtifacts

pytestmark = pytest.mark.slow

FAST = dict(runs=3, min_s=0.0, warmup_s=0.0, timeout_s=60.0)


def _until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


def test_an_agent_that_pinned_the_host_key_on_first_use_follows_a_keys_rotate(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent("rot-a", shared_broker_url)
    key = tmp_path / "keys" / "signing.key"
    make_key(key)
    store = f"sqlite:///{tmp_path / 'host.db'}"
    with Fleet(shared_broker_url, base_topic, store=store, signing_key=key) as fleet:
        fleet.wait_for_device("rot-a", 30)
        old = fleet.keys.current.key_id  # type: ignore[union-attr]
        first = fleet.commands.wait(fleet.commands.send("rot-a", PingCmd()).command_id, 30)
        assert first.state == "answered"
        _until(lambda: fleet.devices()["rot-a"].birth.host_key_id == old, 10, "the pinned key")  # type: ignore[union-attr]

        rotation = rotate_key(key)  # `edgetailor keys rotate`, from another process as well
        fleet.commands._housekeeping()  # the driver's periodic pass: reload, send rotations
        _until(
            lambda: fleet.devices()["rot-a"].birth.host_key_id == rotation.key_id,  # type: ignore[union-attr]
            30, "the agent's birth naming the new key",
        )  # fmt: skip
        # The answer to the rotation reaches the store through the driver's batched writer, which
        # may be a moment behind the birth the agent publishes on pinning the new key.
        _until(
            lambda: [c.state for c in fleet.commands.commands.list(
                device_id="rot-a", kinds=("rotate_key",))] == ["answered"],
            30, "the rotation answered",
        )  # fmt: skip
        # Signed with the new key from now on; the old one is retired once nobody pins it.
        result = wait_benchmark(
            fleet, submit_benchmark(fleet, "rot-a", digits_model.tflite, **FAST), 120
        )
        assert result.runs >= 3
        fleet.commands._housekeeping()
        assert not fleet.keys.previous  # type: ignore[union-attr]
    assert f"host key rotated: {old} -> {rotation.key_id}" in agent.log()


def test_a_result_whose_command_the_host_has_no_record_of_is_acked_unknown_and_dropped(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent("lost-a", shared_broker_url, extra_args=["--outbox-retry-s", "1"])
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    with Fleet(shared_broker_url, base_topic, store=store) as fleet:
        fleet.wait_for_device("lost-a", 30)
        job = submit_benchmark(fleet, "lost-a", digits_model.tflite, **FAST)
        _until(lambda: fleet.commands.commands.get(job).state != "pending", 10, "the publish")  # type: ignore[union-attr]
        # The host loses the command's record before the answer is stored (a database restored
        # from a backup): the agent keeps the answer in its outbox and re-sends it.
        fleet.commands.stop()
        outbox = agent.data_dir / "outbox"
        _until(lambda: list(outbox.glob("*.json")), 60, "the answer in the agent's outbox")
        with store.transaction() as session:
            session.query(CommandRow).filter(CommandRow.command_id == job).delete()
        fleet.commands.start()
        _until(lambda: not list(outbox.glob("*.json")), 30, "the outbox emptied")
        assert fleet.drop_counts().get(("resp", "unknown"), 0) >= 1
        assert CommandStore(store).get(job) is None
    assert "the host has no record of its command" in agent.log()
    store.close()
