"""The command pipeline (host.commands) through a real Fleet, real Mosquitto and both stores,
against a scripted device that signs what it sends: recorded, signed, published and published
again, answers matched and stored once as the agent's struct, acked, cancelled, expired, and
chunks only for commands."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from host.commands import CommandStore, NewCommand, rotate_key
from host.commands.bench import poll_benchmark, submit_benchmark, wait_benchmark
from host.commands.keys import make_key
from host.errors import JobFailedError, JobTimeoutError
from host.fleet import Fleet
from host.store import Store
from shared.errors import ValidationError
from shared.messages import (
    AckCmd,
    BenchmarkCmd,
    CancelCmd,
    ChunkRequest,
    ErrorInfo,
    Message,
    OutputsPart,
    PingCmd,
    Response,
    RotateKeyCmd,
    Telemetry,
)
from shared.results import BenchmarkResult, LatencyStats, to_data
from shared.signing import Signer, key_id_of, verify_manifest, verify_message
from tests.host.fleet_helpers import ScriptedDevice, sample_birth

DEVICE = "pi-01"


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4, dtype=np.int64))
    return path


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = Store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def device(shared_broker_url: str, base_topic: str) -> Iterator[ScriptedDevice]:
    scripted = ScriptedDevice(shared_broker_url, base_topic, DEVICE)
    scripted.announce()
    yield scripted
    scripted.close()


@pytest.fixture
def fleet(shared_broker_url: str, base_topic: str, store: Store, tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(
        shared_broker_url, base_topic, store=store, signing_key=_key(tmp_path / "keys"),
        outputs_dir=tmp_path / "outputs",
    ) as opened:  # fmt: skip
        yield opened


def _key(folder: Path) -> Path:
    """A host key of the test's own (the default one is made on first use in EDGETAILOR_HOME)."""
    make_key(folder / "signing.key")
    return folder / "signing.key"


def _result(job_id: str, sha: str) -> BenchmarkResult:
    stats = LatencyStats(mean=1.0, std=0.1, min=0.9, p50=1.0, p90=1.1, p95=1.2, p99=1.3, max=1.4)
    return BenchmarkResult(
        job_id=job_id, model_sha256=sha, backend="npz", runtime="none", threads=1, size_bytes=10,
        load_ms=1.0, warmup_runs=1, runs=5, latency_ms=stats, peak_rss_mb=30.0,
        rss_growth_mb=1.0, board={"temperature_c": 41.5}, eval_warnings=["few samples"],
    )  # fmt: skip


def _command(device: ScriptedDevice, name: str, timeout: float = 10.0) -> Message:
    """The next command of this name the device received (acks of earlier answers skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        got, message = device.next_command(timeout=max(0.05, deadline - time.monotonic()))
        if got == name:
            return message


def _until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "it") -> object:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)
    return value


def test_a_benchmark_is_recorded_then_published_signed_with_the_device_s_next_sequence(
    device: ScriptedDevice, fleet: Fleet, eval_file: Path
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    first = submit_benchmark(fleet, DEVICE, eval_file, runs=5)
    second = submit_benchmark(fleet, DEVICE, eval_file, runs=5)
    host_key = fleet.keys.current.key
    store_id = fleet.commands.commands.store_id
    messages = [_command(device, "benchmark"), _command(device, "benchmark")]
    assert {m.msg_id for m in messages} == {first, second}
    for message in messages:
        assert message.msg_id.startswith(f"{store_id}-")
        assert verify_message(message, trusted={host_key}, device_id=DEVICE) == host_key
        body = message.body
        assert isinstance(body, BenchmarkCmd) and body.job_id == message.msg_id
        # The manifest is signed with the same key, as the agent checks it.
        verify_manifest(body.model, fleet.keys.current.private_key.public_key(), device_id=DEVICE)
    seqs = [m.auth.seq for m in messages if m.auth is not None]
    assert len(seqs) == 2 and seqs[0] != seqs[1] and min(seqs) >= int(time.time() * 1000) - 60_000
    info = fleet.commands.commands.get(first)
    assert info is not None and info.state == "published" and info.attempts == 1


def test_a_result_sent_twice_is_stored_once_equal_to_the_agent_s_struct_and_acked_each_time(
    device: ScriptedDevice, fleet: Fleet, store: Store, eval_file: Path
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    command_id = submit_benchmark(fleet, DEVICE, eval_file, runs=5)
    command = _command(device, "benchmark")
    resp_topic = fleet.topics.resp(DEVICE, "benchmark")
    device.send(
        resp_topic,
        Response(status="progress", data={"stage": "accepted", "job_id": command_id}),
        corr_id=command.msg_id,
    )
    _until(lambda: fleet.commands.commands.get(command_id).state == "running", what="progress")
    sent = _result(command_id, command.body.model.sha256)  # type: ignore[union-attr]
    final = Response(status="ok", data=to_data(sent))
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-1")
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-1")  # outbox re-send
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-2")  # new envelope

    assert wait_benchmark(fleet, command_id, 10) == sent
    acked: set[str] = set()  # copies that arrive together are acknowledged together, once
    while acked != {"final-1", "final-2"}:
        ack = _command(device, "ack")
        assert isinstance(ack.body, AckCmd) and not ack.body.unknown
        assert verify_message(ack, trusted={fleet.keys.current.key}, device_id=DEVICE)
        assert set(ack.body.msg_ids) <= {"final-1", "final-2"}
        acked |= set(ack.body.msg_ids)
    # Read back in another process's view of the database: the same struct, typed.
    info = CommandStore(Store(store.url)).get(command_id)
    assert info is not None and info.state == "answered" and info.response_msg_id == "final-1"
    assert info.result_as(BenchmarkResult) == sent
    assert poll_benchmark(fleet, command_id) == sent


def test_a_device_error_fails_the_command_with_the_device_s_code(
    device: ScriptedDevice, fleet: Fleet, eval_file: Path
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    command_id = submit_benchmark(fleet, DEVICE, eval_file)
    command = _command(device, "benchmark")
    device.send(
        fleet.topics.resp(DEVICE, "benchmark"),
        Response(status="error", error=ErrorInfo(code="hash_mismatch", message="sha differs")),
        corr_id=command.msg_id,
    )
    with pytest.raises(JobFailedError, match=r"\[hash_mismatch\] sha differs") as info:
        wait_benchmark(fleet, command_id, 10)
    assert info.value.code == "hash_mismatch"


def test_a_command_without_an_answer_times_out_naming_its_state(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    sent = fleet.commands.send(DEVICE, PingCmd())
    assert _command(device, "ping").msg_id == sent.command_id
    with pytest.raises(JobTimeoutError, match="state published"):
        fleet.commands.wait(sent.command_id, timeout=0.3)


def test_an_answer_to_another_database_s_command_is_left_alone_and_an_unknown_one_is_acked_unknown(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    topic = fleet.topics.resp(DEVICE, "benchmark")
    device.send(topic, Response(status="ok", data={}), corr_id="0badc0de-elsewhere", msg_id="r-1")
    with pytest.raises(queue.Empty):
        _command(device, "ack", timeout=1.0)
    ours = f"{fleet.commands.commands.store_id}-{'0' * 32}"  # ours, never recorded
    device.send(topic, Response(status="ok", data={}), corr_id=ours, msg_id="r-2")
    ack = _command(device, "ack")
    assert isinstance(ack.body, AckCmd)
    assert ack.body.unknown == ["r-2"] and ack.body.msg_ids == []
    assert fleet.commands.commands.get(ours) is None


@pytest.mark.parametrize("forgery", ["unsigned", "other_key", "other_device"])
def test_a_forged_response_is_not_stored_as_the_job_s(
    forgery: str,
    device: ScriptedDevice,
    fleet: Fleet,
    eval_file: Path,
    shared_broker_url: str,
    base_topic: str,
) -> None:
    """Another client answering on resp/ before the device: nothing of it is stored or acked."""
    fleet.wait_for_device(DEVICE, 5)
    command_id = submit_benchmark(fleet, DEVICE, eval_file)
    command = _command(device, "benchmark")
    forged = _result(command_id, "ee" * 32)
    body = Response(status="ok", data=to_data(forged))
    if forgery == "other_device":
        # A real device with its own pinned key, answering another device's command.
        other = ScriptedDevice(shared_broker_url, base_topic, "pi-02")
        other.announce()
        fleet.wait_for_device("pi-02", 5)
        other.send(fleet.topics.resp("pi-02", "benchmark"), body, corr_id=command.msg_id)
        other.close()
    else:
        payload = device.envelope(
            body, corr_id=command.msg_id, unsigned=forgery == "unsigned",
            signer=Signer.generate() if forgery == "other_key" else None,
        )  # fmt: skip
        device.publish(fleet.topics.resp(DEVICE, "benchmark"), payload)
    reason = {"unsigned": "unsigned", "other_key": "untrusted_key", "other_device": "misaddressed"}
    topic = "resp"
    _until(lambda: fleet.drop_counts().get((topic, reason[forgery])), what="the dropped forgery")
    assert fleet.commands.commands.get(command_id).state == "published"
    real = _result(command_id, command.body.model.sha256)  # type: ignore[union-attr]
    device.send(
        fleet.topics.resp(DEVICE, "benchmark"),
        Response(status="ok", data=to_data(real)),
        corr_id=command.msg_id,
    )
    assert wait_benchmark(fleet, command_id, 10) == real


def test_a_command_for_an_offline_device_goes_out_when_it_comes_back_and_again_after_a_reconnect(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    device.offline()
    _until(lambda: not fleet.devices()[DEVICE].online, what="offline")
    sent = fleet.commands.send(DEVICE, PingCmd())
    with pytest.raises(queue.Empty):
        _command(device, "ping", timeout=1.0)
    assert fleet.commands.commands.get(sent.command_id).state == "pending"
    device.announce()
    first = _command(device, "ping")
    assert first.msg_id == sent.command_id
    device.offline()
    _until(lambda: not fleet.devices()[DEVICE].online, what="offline")
    device.announce()
    again = _command(device, "ping")
    # The same command, signed anew: a new sequence number and a new expiry.
    assert again.msg_id == first.msg_id
    assert again.auth is not None and first.auth is not None
    assert again.auth.seq > first.auth.seq and again.auth.exp >= first.auth.exp
    assert fleet.commands.commands.get(sent.command_id).attempts == 2


def test_cancelling_a_published_benchmark_sends_a_signed_cancel_and_ends_it_as_cancelled(
    device: ScriptedDevice, fleet: Fleet, eval_file: Path
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    command_id = submit_benchmark(fleet, DEVICE, eval_file)
    _command(device, "benchmark")
    assert fleet.commands.cancel(command_id)
    cancel = _command(device, "cancel")
    assert isinstance(cancel.body, CancelCmd) and cancel.body.job_id == command_id
    assert verify_message(cancel, trusted={fleet.keys.current.key}, device_id=DEVICE)
    with pytest.raises(JobFailedError) as failed:
        wait_benchmark(fleet, command_id, 5)
    assert failed.value.code == "cancelled"
    assert not fleet.commands.cancel(command_id)  # once ended, nothing to cancel
    # A pending command is cancelled without anything going out.
    device.offline()
    _until(lambda: not fleet.devices()[DEVICE].online, what="offline")
    waiting = submit_benchmark(fleet, DEVICE, eval_file)
    assert fleet.commands.cancel(waiting)
    device.announce()
    with pytest.raises(queue.Empty):
        _command(device, "benchmark", timeout=1.5)


def test_a_command_past_its_expiry_ends_expired_and_is_never_published(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    device.offline()
    _until(lambda: not fleet.devices()[DEVICE].online, what="offline")
    sent = fleet.commands.send(DEVICE, PingCmd(), expires_in=0.2)
    with pytest.raises(JobTimeoutError):
        fleet.commands.wait(sent.command_id, 0.1)
    info = fleet.commands.wait(sent.command_id, 5)
    assert info.state == "expired" and info.error_code == "expired"
    device.announce()
    with pytest.raises(queue.Empty):
        _command(device, "ping", timeout=1.5)


def test_a_body_that_breaks_the_wire_contract_is_refused_before_it_is_recorded(
    fleet: Fleet,
) -> None:
    from host.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid cancel command"):
        fleet.commands.send(DEVICE, CancelCmd(job_id="no spaces allowed"))
    assert fleet.commands.commands.list(device_id=DEVICE) == []


def test_outputs_parts_of_an_unknown_job_are_acked_as_unknown_and_not_written(
    device: ScriptedDevice, fleet: Fleet, tmp_path: Path
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    job = f"{fleet.commands.commands.store_id}-{'1' * 32}"
    part = OutputsPart(job_id=job, sha256="ab" * 32, index=0, count=1, data="AAAA")
    device.send(fleet.topics.resp(DEVICE, "benchmark"), part, msg_id="part-1")
    ack = _command(device, "ack")
    assert isinstance(ack.body, AckCmd) and ack.body.unknown == ["part-1"]
    assert not (tmp_path / "outputs" / f"{job}.parts").exists()


# -- chunks only for commands ---------------------------------------------------------------------
def _ask(device: ScriptedDevice, sha256: str, indices: list[int], **kw: object) -> None:
    request = ChunkRequest(sha256=sha256, chunk_size=1024, indices=indices)
    device.publish(device.topics.xfer_request(device.device_id), device.envelope(request, **kw))  # type: ignore[arg-type]


def test_chunks_go_only_to_a_device_with_an_open_command_naming_the_artifact(
    device: ScriptedDevice, fleet: Fleet, tmp_path: Path
) -> None:
    from host.commands.grants import DEFAULT_MAX_SENDS

    fleet.wait_for_device(DEVICE, 5)
    artifact = tmp_path / "artifact.npz"
    np.savez(artifact, x=np.arange(2000, dtype=np.float32))
    manifest = fleet.offer(artifact)
    device.watch_artifact(manifest.sha256)
    _ask(device, manifest.sha256, [0, 1])  # no command names it: nothing
    assert device.drain_chunks(0.7) == []
    assert fleet.drop_counts()[("xfer_req", "no_command")] == 1

    command = fleet.commands.send(DEVICE, BenchmarkCmd(
        job_id=fleet.commands.commands.new_id(), model=manifest, chunk_size=1024,
    ))  # fmt: skip
    _command(device, "benchmark")
    _ask(device, manifest.sha256, [0, 1], signer=Signer.generate())  # not the pinned key
    assert device.drain_chunks(0.7) == []
    _ask(device, manifest.sha256, [0, 1], unsigned=True)
    assert device.drain_chunks(0.7) == []
    _ask(device, manifest.sha256, [0, 1])
    assert sorted(c.index for c in device.drain_chunks(0.7)) == [0, 1]
    # A device that keeps asking for the same chunk gets it a bounded number of times.
    for _ in range(DEFAULT_MAX_SENDS + 5):
        _ask(device, manifest.sha256, [2])
    assert len([c for c in device.drain_chunks(1.5) if c.index == 2]) <= DEFAULT_MAX_SENDS
    assert fleet.drop_counts()[("xfer_req", "chunk_limit")] >= 5
    # Once the command ended, the artifact is closed to the device again.
    assert fleet.commands.cancel(command.command_id)
    _ask(device, manifest.sha256, [3])
    assert device.drain_chunks(0.7) == []


# -- keys -------------------------------------------------------------------------------------------
def test_a_rotated_host_key_reaches_devices_through_a_rotation_signed_with_the_key_they_pin(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    old = fleet.keys.current
    device.announce(msgspec.structs.replace(sample_birth(), host_key_id=old.key_id))
    _until(lambda: fleet.devices()[DEVICE].birth.host_key_id == old.key_id, what="birth")  # type: ignore[union-attr]
    rotation = rotate_key(fleet.keys.path)
    assert rotation.previous_key_id == old.key_id and rotation.key_id != old.key_id
    fleet.commands._housekeeping()  # what the driver does every few seconds
    rotate = _command(device, "rotate_key")
    assert isinstance(rotate.body, RotateKeyCmd) and key_id_of(rotate.body.key) == rotation.key_id
    assert verify_message(rotate, trusted={old.key}, device_id=DEVICE)  # vouched by the old key
    fleet.commands.send(DEVICE, PingCmd())
    assert verify_message(_command(device, "ping"), trusted={old.key}, device_id=DEVICE)
    # The device confirms: its birth names the new key, which signs from now on.
    device.announce(msgspec.structs.replace(sample_birth(), host_key_id=rotation.key_id))
    _until(
        lambda: fleet.devices()[DEVICE].birth.host_key_id == rotation.key_id,  # type: ignore[union-attr]
        what="birth with the new key",
    )
    fleet.commands.send(DEVICE, PingCmd())
    assert verify_message(
        _command(device, "ping"), trusted={fleet.keys.current.key}, device_id=DEVICE
    )
    fleet.commands._housekeeping()
    assert not fleet.keys.previous  # no known device pins the old key: retired
    assert not (fleet.keys.previous_dir / f"{old.key_id}.key").exists()


def test_a_device_whose_key_changed_is_dropped_until_an_operator_forgets_its_old_key(
    device: ScriptedDevice, fleet: Fleet, store: Store, shared_broker_url: str, base_topic: str
) -> None:
    fleet.wait_for_device(DEVICE, 5)
    assert store.device_key(DEVICE) == device.signer.key
    wiped = ScriptedDevice(shared_broker_url, base_topic, DEVICE)  # a new key: its data dir wiped
    try:
        wiped.announce()
        _until(lambda: fleet.drop_counts().get(("birth", "untrusted_key")), what="the drop")
        assert store.device_key(DEVICE) == device.signer.key
        assert store.forget_device_key(DEVICE)

        def pinned_anew() -> bool:
            # What a running agent sends anyway (telemetry); the host reads the pin again and
            # the retained birth, signed by the new key, pins it.
            wiped.send(fleet.topics.telemetry(DEVICE), Telemetry(
                cpu_percent=1.0, mem_used_mb=1.0, mem_total_mb=2.0, agent_rss_mb=1.0))  # fmt: skip
            return store.device_key(DEVICE) == wiped.signer.key

        _until(pinned_anew, 15, "the new pin")
    finally:
        wiped.close()


# -- the repository -----------------------------------------------------------------------------
def test_sequence_numbers_grow_per_device_never_below_the_clock_across_store_handles(
    store: Store,
) -> None:
    first, second = CommandStore(store), CommandStore(Store(store.url))
    got = []
    for commands, count in ((first, 3), (second, 2), (first, 1)):
        with commands.store.transaction() as session:
            start = commands.allocate_sequences(session, "dev-a", count)
        got += list(range(start, start + count))
    assert got == sorted(got) and len(set(got)) == 6
    assert got[0] >= int(time.time() * 1000) - 10_000
    with first.store.transaction() as session:
        other = first.allocate_sequences(session, "dev-b", 1)
    assert other >= got[0]  # every device starts at the clock, not at 1
    assert first.store_id == second.store_id and len(first.store_id) == 8


def test_a_stored_result_of_another_kind_is_not_read_as_a_benchmark(store: Store) -> None:
    [ping] = CommandStore(store).add([NewCommand(DEVICE, PingCmd())])
    with pytest.raises(ValidationError, match="whose result is not a BenchmarkResult"):
        ping.result_as(BenchmarkResult)
