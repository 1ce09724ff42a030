"""The deployment driver against a scripted fleet (the real command pipeline, synchronous):
desired state reached wave by wave, offline devices caught up later, failing waves rolled back,
restarts and second drivers that send nothing twice. The real agents and Mosquitto are in
tests/e2e/test_service_deploy.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from host.deploy import DeploymentDriver, DeployTarget, create_rollout, desired_state
from host.store import Store
from host.store.deployments import DeploymentStore
from shared.manifest import ArtifactManifest
from tests.host.fake_fleet import FakeFleet


@pytest.fixture
def store(db_url: str) -> Store:
    with Store(db_url) as opened:
        yield opened


def _target(tmp_path: Path, device: str, content: bytes = b"model-v2") -> DeployTarget:
    path = tmp_path / f"{hashlib.sha256(content).hexdigest()[:8]}.tflite"
    path.write_bytes(content)
    manifest = ArtifactManifest(
        sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content), format="tflite",
        precision="fp32",
    )  # fmt: skip
    return DeployTarget(device, path, manifest=manifest, label="v2")


def _states(store: Store, rollout_id: str) -> dict[str, str]:
    return {t.device_id: t.state for t in DeploymentStore(store).targets(rollout_id)}


def _drive(driver: DeploymentDriver, times: int = 4) -> None:
    for _ in range(times):
        driver.step()


def test_an_offline_device_gets_its_deploy_when_it_returns_and_its_wave_does_not_wait(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    for device in ("a", "b"):
        fleet.online(device)
    rollout = create_rollout(
        store, [_target(tmp_path, d) for d in ("a", "b", "c")], "100%", offline_grace_s=0.0
    )
    driver = DeploymentDriver(store, fleet)
    _drive(driver)
    assert _states(store, rollout.rollout_id) == {
        "a": "committed",
        "b": "committed",
        "c": "pending",
    }
    assert fleet.deploys_to("c") == []
    assert DeploymentStore(store).get_rollout(rollout.rollout_id).status == "active"

    fleet.online("c")
    _drive(driver)
    assert _states(store, rollout.rollout_id)["c"] == "committed"
    finished = DeploymentStore(store).get_rollout(rollout.rollout_id)
    assert (finished.status, finished.open) == ("done", False)
    sequences = [cmd.model.sequence for d in "abc" for cmd in fleet.deploys_to(d)]
    assert len(sequences) == 3 and len(set(sequences)) == 3
    assert all(cmd.model.target_device == d for d in "abc" for cmd in fleet.deploys_to(d))


def test_a_later_wave_starts_only_once_the_earlier_one_has_answered(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    for device in ("a", "b", "c"):
        fleet.online(device)
    fleet.answers["a"] = FakeFleet.silent
    rollout = create_rollout(store, [_target(tmp_path, d) for d in "abc"], "1,100%")
    driver = DeploymentDriver(store, fleet)
    _drive(driver)
    assert _states(store, rollout.rollout_id) == {"a": "sent", "b": "waiting", "c": "waiting"}
    fleet.answers["a"] = fleet.commit
    fleet.offline("a")
    fleet.online("a")  # back: the driver publishes the same command again, the device answers
    _drive(driver)
    assert _states(store, rollout.rollout_id) == dict.fromkeys("abc", "committed")
    assert len(set(fleet.msg_ids_to("a"))) == 1 and len(fleet.msg_ids_to("a")) == 2


def test_a_wave_past_its_failure_threshold_is_rolled_back_and_later_waves_never_start(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    for device in "abcd":
        fleet.online(device)
    fleet.answers["c"] = FakeFleet.fail_health
    rollout = create_rollout(store, [_target(tmp_path, d) for d in "abcd"], "1,50%,100%")
    driver = DeploymentDriver(store, fleet)
    _drive(driver, 6)
    assert _states(store, rollout.rollout_id) == {
        "a": "committed", "b": "wave_rolled_back", "c": "rolled_back", "d": "skipped",
    }  # fmt: skip
    stored = DeploymentStore(store).get_rollout(rollout.rollout_id)
    assert (stored.status, stored.aborted_wave, stored.open) == ("aborted", 2, False)
    assert "wave 2: 1 of 2 devices failed (c: rolled_back)" in stored.reason
    assert fleet.deploys_to("d") == []
    rollbacks = [p for p in fleet.published if p.name == "rollback"]
    assert [(p.device_id, p.message.body.deploy_id) for p in rollbacks] == [
        ("b", DeploymentStore(store).targets(rollout.rollout_id)[1].deploy_id)
    ]


def test_a_restarted_host_publishes_the_recorded_command_again_and_takes_no_new_sequence(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    fleet.online("a")
    fleet.answers["a"] = FakeFleet.silent
    rollout = create_rollout(store, [_target(tmp_path, "a")], "100%")
    DeploymentDriver(store, fleet).step()
    [sent] = DeploymentStore(store).targets(rollout.rollout_id)
    assert sent.state == "sent" and sent.sequence

    fleet.answers["a"] = fleet.commit
    fleet.restart()  # a new process: nothing in memory
    restarted = DeploymentDriver(store, fleet)
    fleet.pump()
    _drive(restarted)
    [done] = DeploymentStore(store).targets(rollout.rollout_id)
    assert done.state == "committed" and done.sequence == sent.sequence
    assert fleet.msg_ids_to("a") == [sent.command_msg_id, sent.command_msg_id]
    assert {c.model.sequence for c in fleet.deploys_to("a")} == {sent.sequence}


def test_two_drivers_on_one_database_send_each_deploy_once(store: Store, tmp_path: Path) -> None:
    fleet = FakeFleet(store)
    for device in "abc":
        fleet.online(device)
    rollout = create_rollout(store, [_target(tmp_path, d) for d in "abc"], "100%")
    first, second = DeploymentDriver(store, fleet), DeploymentDriver(store, fleet)
    for _ in range(3):
        first.step()
        second.step()
    assert _states(store, rollout.rollout_id) == dict.fromkeys("abc", "committed")
    for device in "abc":
        assert len({c.model.sequence for c in fleet.deploys_to(device)}) == 1
        assert len(set(fleet.msg_ids_to(device))) == 1


def test_a_device_online_without_an_answer_times_out_and_a_late_answer_still_counts(
    store: Store, tmp_path: Path
) -> None:
    now = [1000.0]
    fleet = FakeFleet(store)
    fleet.online("a")
    fleet.answers["a"] = FakeFleet.silent
    rollout = create_rollout(store, [_target(tmp_path, "a")], "100%", timeout_s=10.0)
    driver = DeploymentDriver(store, fleet, clock=lambda: now[0])
    driver.step()
    DeploymentStore(store).update_target(
        DeploymentStore(store).targets(rollout.rollout_id)[0].deploy_id, sent_at=now[0]
    )
    now[0] += 10.0 + 121.0
    driver.step()
    [timed_out] = DeploymentStore(store).targets(rollout.rollout_id)
    assert timed_out.state == "timeout" and "no final answer within 130 s" in timed_out.detail

    command = next(p.message for p in fleet.published)
    fleet.reply(command, fleet.commit("deploy", command))  # late, but it says what happened
    driver.step()
    assert DeploymentStore(store).targets(rollout.rollout_id)[0].state == "committed"


def test_rolling_back_a_rollout_reverts_its_committed_devices_and_skips_the_rest(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    fleet.online("a")
    rollout = create_rollout(
        store, [_target(tmp_path, d) for d in "ab"], "100%", offline_grace_s=0.0
    )
    driver = DeploymentDriver(store, fleet)
    _drive(driver)
    assert _states(store, rollout.rollout_id) == {"a": "committed", "b": "pending"}
    assert driver.roll_back(rollout.rollout_id) == ["a"]
    _drive(driver)
    assert _states(store, rollout.rollout_id) == {"a": "reverted", "b": "skipped"}
    fleet.online("b")
    _drive(driver)
    assert fleet.deploys_to("b") == []  # skipped stays skipped


def test_cancel_stops_sending_and_a_newer_rollout_supersedes_what_was_not_sent(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    old = create_rollout(store, [_target(tmp_path, "a", b"v1")], "100%")
    new = create_rollout(store, [_target(tmp_path, "a", b"v2")], "100%")
    assert _states(store, old.rollout_id) == {"a": "superseded"}
    driver = DeploymentDriver(store, fleet)
    assert driver.cancel(new.rollout_id)
    assert not driver.cancel(new.rollout_id)  # no longer active
    fleet.online("a")
    _drive(driver)
    assert fleet.published == []
    assert _states(store, new.rollout_id) == {"a": "skipped"}


def test_status_says_why_a_device_differs_from_what_it_should_run(
    store: Store, tmp_path: Path
) -> None:
    fleet = FakeFleet(store)
    target = _target(tmp_path, "a")
    create_rollout(store, [target], "100%")
    dstore = DeploymentStore(store)
    away = desired_state(dstore, "a", actual_sha256="f" * 64, online=False, last_seen=None)
    assert not away["in_sync"] and "offline" in away["reason"] and "sent when" in away["reason"]
    fleet.online("a")
    fleet.answers["a"] = FakeFleet.fail_health
    _drive(DeploymentDriver(store, fleet))
    failed = desired_state(dstore, "a", actual_sha256="f" * 64, online=True)
    assert "health check failed" in failed["reason"]
    assert failed["last_deploy"]["state"] == "rolled_back"
    fleet.answers["a"] = fleet.commit
    rollout = create_rollout(store, [target], "100%")
    _drive(DeploymentDriver(store, fleet))
    synced = desired_state(dstore, "a", actual_sha256=target.manifest.sha256, online=True)
    assert synced["in_sync"] and synced["desired"]["rollout_id"] == rollout.rollout_id
