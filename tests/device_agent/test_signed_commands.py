"""Signed commands through a real agent on the real broker: an agent that pinned the host key on
first use refuses forged rollback, cancel, ack and benchmark commands (unsigned, signed with
another key, replayed, expired, for another device) with their codes, and its active model,
outbox, journal and stored results stay as they were; the pin itself (first use, --trust-key,
rotation), the refusal budget, and acks naming unknown responses."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.messages import (
    AckCmd,
    BenchmarkCmd,
    Birth,
    Body,
    CancelCmd,
    DeployCmd,
    PingCmd,
    Response,
    RollbackCmd,
    RotateKeyCmd,
    decode,
    encode,
    new_msg_id,
)
from shared.signing import Signer, save_public_key
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)
HEALTH = dict(health_runs=3, timeout_s=60.0)
FORGERIES = ("unsigned", "other_key", "replayed", "expired", "misaddressed")


def _state(data_dir: Path) -> dict[str, object]:
    """What a forged command must not change: the active and previous model, the outbox, the
    journal and the stored artifacts."""

    def names(folder: str) -> list[str]:
        path = data_dir / folder
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def link(name: str) -> str | None:
        path = data_dir / name
        return path.resolve().name if path.is_symlink() else None

    return {
        "active": link("active"),
        "previous": link("previous"),
        "outbox": names("outbox"),
        "journal": names("journal"),
        "store": names("store"),
    }


def _forge(
    host: MiniHost, device_id: str, body: Body, forgery: str, genuine: bytes | None
) -> tuple[bytes, str]:
    """(envelope, msg_id) of one forgery of ``body`` for ``device_id``."""
    msg_id = new_msg_id()
    if forgery == "unsigned":
        return encode(body, device_id=device_id, msg_id=msg_id), msg_id
    if forgery == "other_key":
        return host.envelope(device_id, body, msg_id=msg_id, signer=Signer.generate()), msg_id
    if forgery == "expired":
        # Signed by the pinned key, but two hours ago with a lifetime of one.
        sent = time.time() - 7200
        return host.envelope(device_id, body, msg_id=msg_id, now=sent, ttl_s=3600), msg_id
    if forgery == "misaddressed":
        return host.envelope(device_id, body, msg_id=msg_id, address="another-device"), msg_id
    assert forgery == "replayed" and genuine is not None  # a captured, validly signed copy
    return genuine, decode(genuine).msg_id


def _refused(host: MiniHost, msg_id: str, seen: int) -> Response:
    """The answer to a command, after the ``seen`` answers its msg_id already had."""
    host.wait_for(lambda: len(host.finals(msg_id)) > seen, 10, f"an answer to {msg_id}")
    response = host.finals(msg_id)[-1].message.body
    assert isinstance(response, Response) and response.status == "error", response
    return response


CODES = {
    "unsigned": "unsigned",
    "other_key": "untrusted_key",
    "replayed": "replayed",
    "expired": "expired",
    "misaddressed": "misaddressed",
}


@pytest.mark.parametrize("kind", ["rollback", "cancel", "ack", "benchmark"])
def test_forged_commands_are_refused_by_an_agent_that_pinned_the_host_key_and_change_nothing(
    kind: str,
    model_dir: Path,
    shared_broker_url: str,
    base_topic: str,
    start_agent: Callable[..., AgentProcess],
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    with MiniHost(shared_broker_url, base_topic, auto_ack=False) as host:
        # What a forgery could change: an active model with a previous one behind it (rollback),
        # a running job (cancel), unacknowledged results in the outbox (ack), a store (benchmark).
        first = host.offer(model_dir / "float.tflite", "tflite")
        second = host.offer(model_dir / "int8.tflite", "tflite", "int8")
        for deploy_id, model in (("d-1", first), ("d-2", second)):
            done = host.wait_final(
                host.send(device_id, "deploy", DeployCmd(deploy_id=deploy_id, model=model, **HEALTH)),
                90,
            )  # fmt: skip
            assert done.status == "ok", done
        assert (data_dir / "trust" / "host.json").is_file()
        long_job = None
        if kind == "cancel":  # a running job a forged cancel would stop
            long_job = host.send(
                device_id, "benchmark",
                BenchmarkCmd(job_id="long", model=first, min_s=3600.0, timeout_s=600.0),
            )  # fmt: skip
            host.wait_for(
                lambda: any(r.data and r.data.get("stage") == "running"
                            for r in host.responses_to(long_job)),
                30, "the long job running",
            )  # fmt: skip
        # What each forgery tries; and a genuine command of the kind, captured as sent, that a
        # replay repeats. A journaled one (rollback, benchmark) is then a duplicate: its stored
        # answer again, nothing runs; the others are refused as replayed.
        bodies: dict[str, Body] = {
            "rollback": RollbackCmd(reason="forged"),
            "cancel": CancelCmd(job_id="long"),
            "ack": AckCmd(msg_ids=[e.stem for e in (data_dir / "outbox").glob("*.json")]),
            "benchmark": BenchmarkCmd(job_id="forged", model=second, **FAST),
        }
        genuine_bodies: dict[str, Body] = {
            "rollback": RollbackCmd(deploy_id="never-deployed"),
            "cancel": CancelCmd(job_id="never-sent"),
            "ack": AckCmd(msg_ids=["nothing-of-mine"]),
            "benchmark": BenchmarkCmd(job_id="genuine", model=second, **FAST),
        }
        genuine = host.envelope(device_id, genuine_bodies[kind])
        host.send_raw(device_id, kind, genuine)
        if kind == "ack":  # never answered: a ping after it says it was handled
            assert host.wait_final(host.send(device_id, "ping", PingCmd()), 10).status == "ok"
        else:
            host.wait_final(decode(genuine).msg_id, 60)
        before = _state(data_dir)

        for forgery in FORGERIES:
            payload, msg_id = _forge(host, device_id, bodies[kind], forgery, genuine)
            seen = len(host.finals(msg_id))
            host.send_raw(device_id, kind, payload)
            if forgery == "replayed" and kind in ("rollback", "benchmark"):
                # The journal knows it: answered as the duplicate it is, nothing runs again.
                host.wait_for(lambda m=msg_id: len(host.finals(m)) >= 2, 15, "duplicate answer")
                continue
            response = _refused(host, msg_id, seen)
            assert response.error is not None and response.error.code == CODES[forgery], (
                forgery,
                response,
            )
        assert _state(data_dir) == before
        if long_job is not None:  # still running
            assert not any(r.status != "progress" for r in host.responses_to(long_job))
        assert host.requested_indices(second.sha256, since=time.time() - 0.5) == []
        assert host.wait_final(host.send(device_id, "ping", PingCmd()), 10).status == "ok"


def test_the_first_valid_key_is_pinned_printed_and_named_in_the_birth_and_others_are_refused(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str, data_dir: Path
) -> None:
    agent = start_agent()
    birth = decode(minihost.wait_for(
        lambda: minihost.retained.get(minihost.topics.birth(device_id)), 10, "birth"))  # fmt: skip
    assert isinstance(birth.body, Birth) and birth.body.host_key_id is None
    assert birth.auth is not None  # the agent signs what it sends, its birth too
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"
    key_id = minihost.signer.key_id
    assert f"pinned host key {key_id} on first use" in agent.log()
    minihost.wait_for(
        lambda: decode(minihost.retained[minihost.topics.birth(device_id)]).body.host_key_id  # type: ignore[union-attr]
        == key_id,
        10, "a birth naming the pinned key",
    )  # fmt: skip
    stranger = minihost.envelope(device_id, PingCmd(), signer=Signer.generate())
    minihost.send_raw(device_id, "ping", stranger)
    refused = minihost.wait_final(decode(stranger).msg_id, 10)
    assert refused.error is not None and refused.error.code == "untrusted_key"
    agent.restart()  # the pin survives a restart
    agent.wait_online()
    again = minihost.envelope(device_id, PingCmd(), signer=Signer.generate())
    minihost.send_raw(device_id, "ping", again)
    assert minihost.wait_final(decode(again).msg_id, 10).error.code == "untrusted_key"  # type: ignore[union-attr]
    assert agent.log().count("on first use") == 1


def test_an_agent_started_with_trust_key_pins_it_before_any_command(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str, tmp_path: Path
) -> None:
    public = tmp_path / "host.pub"
    save_public_key(minihost.signer.private_key.public_key(), public)
    start_agent(["--trust-key", str(public)])
    first = minihost.envelope(device_id, PingCmd(), signer=Signer.generate())
    minihost.send_raw(device_id, "ping", first)  # the first command, but not the pinned key
    assert minihost.wait_final(decode(first).msg_id, 10).error.code == "untrusted_key"  # type: ignore[union-attr]
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"


def test_a_pinned_agent_follows_a_rotation_signed_by_the_old_key_and_refuses_any_other(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str, data_dir: Path
) -> None:
    agent = start_agent()
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"
    old, new = minihost.signer, Signer.generate()
    # Neither unsigned nor signed by a key nobody vouched for: refused, the pin stays.
    unsigned = encode(RotateKeyCmd(key=new.key), device_id=device_id)
    minihost.send_raw(device_id, "rotate_key", unsigned)
    assert minihost.wait_final(decode(unsigned).msg_id, 10).error.code == "unsigned"  # type: ignore[union-attr]
    foreign = minihost.envelope(device_id, RotateKeyCmd(key=new.key), signer=new)
    minihost.send_raw(device_id, "rotate_key", foreign)
    assert minihost.wait_final(decode(foreign).msg_id, 10).error.code == "untrusted_key"  # type: ignore[union-attr]
    # Vouched for by the pinned key: followed.
    rotated = minihost.wait_final(
        minihost.send(device_id, "rotate_key", RotateKeyCmd(key=new.key)), 10
    )
    assert rotated.status == "ok" and rotated.data == {
        "key_id": new.key_id, "previous_key_id": old.key_id,
    }  # fmt: skip
    minihost.wait_for(
        lambda: decode(minihost.retained[minihost.topics.birth(device_id)]).body.host_key_id  # type: ignore[union-attr]
        == new.key_id,
        10, "a birth naming the new key",
    )  # fmt: skip
    minihost.signer = new
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"
    stale = minihost.envelope(device_id, PingCmd(), signer=old)
    minihost.send_raw(device_id, "ping", stale)
    assert minihost.wait_final(decode(stale).msg_id, 10).error.code == "untrusted_key"  # type: ignore[union-attr]
    agent.restart()  # the rotated pin survives a restart
    agent.wait_online()
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"
    assert new.key in (data_dir / "trust" / "host.json").read_text()


def test_a_replay_after_a_restart_is_still_refused(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    agent = start_agent()
    captured = minihost.envelope(device_id, CancelCmd(job_id="nothing"))
    minihost.send_raw(device_id, "cancel", captured)
    assert minihost.wait_final(decode(captured).msg_id, 10).status == "ok"
    agent.restart()
    agent.wait_online()
    minihost.send_raw(device_id, "cancel", captured)
    minihost.wait_for(lambda: len(minihost.finals(decode(captured).msg_id)) == 2, 10, "refusal")
    answers = [r.message.body for r in minihost.finals(decode(captured).msg_id)]
    assert [a.status for a in answers] == ["ok", "error"], answers  # type: ignore[union-attr]
    assert answers[1].error.code == "replayed"  # type: ignore[union-attr]


def test_a_flood_of_forged_commands_gets_a_bounded_number_of_answers(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    from device_agent.agent import REFUSAL_BURST, REFUSALS_PER_S

    start_agent()
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"
    started = time.monotonic()
    forged = [encode(RollbackCmd(), device_id=device_id) for _ in range(200)]
    for payload in forged:
        minihost.send_raw(device_id, "rollback", payload)
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 30).status == "ok"
    elapsed = time.monotonic() - started
    answered = sum(bool(minihost.finals(decode(p).msg_id)) for p in forged)
    assert 0 < answered <= REFUSAL_BURST + REFUSALS_PER_S * elapsed + 1


def test_an_ack_naming_a_response_as_unknown_drops_it_from_the_outbox(
    model_dir: Path,
    shared_broker_url: str,
    base_topic: str,
    start_agent: Callable[..., AgentProcess],
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent(["--outbox-retry-s", "600"])
    with MiniHost(shared_broker_url, base_topic, auto_ack=False) as host:
        model = host.offer(model_dir / "float.tflite", "tflite")
        command = host.send(device_id, "benchmark", BenchmarkCmd(job_id="j", model=model, **FAST))
        host.wait_final(command, 60)
        [entry] = sorted((data_dir / "outbox").glob("*.json"))
        host.send(device_id, "ack", AckCmd(msg_ids=[], unknown=[entry.stem]))
        host.wait_for(lambda: not entry.exists(), 10, "the unknown response dropped")
