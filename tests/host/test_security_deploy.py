"""The board-side deployment files: the hardened systemd unit and the install script's checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from host.security import init_ca, issue_cert

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "edgetailor-agent.service"
INSTALL = DEPLOY / "install-agent.sh"


def _unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_agent_unit_is_hardened_restarts_forever_and_bounds_memory() -> None:
    settings = _unit_settings()
    assert settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "edgetailor-agent"
    assert settings["Restart"] == "always"
    assert settings["StartLimitIntervalSec"] == "0"
    assert settings["MemoryMax"]
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["User"] != "root"
    assert "--data-dir ${STATE_DIRECTORY}" in settings["ExecStart"]
    assert "--tls-key /etc/edgetailor/tls/device.key" in settings["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_every_setting_of_the_agent_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists; everything else is the shipped unit verbatim.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace("/opt/edgetailor/venv/bin/edgetailor-agent", "/bin/true")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings (exit 0), and systemd then ignores them.
    assert str(unit) not in result.stdout + result.stderr, result.stdout + result.stderr


def test_install_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(INSTALL, os.X_OK)


@pytest.mark.skipif(os.geteuid() != 0, reason="the script refuses to run without root first")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="the certificate checks use openssl")
def test_install_script_refuses_a_certificate_for_another_device_or_ca_before_changing_anything(
    tmp_path: Path,
) -> None:
    init_ca(tmp_path / "pki")
    other = tmp_path / "other-pki"
    init_ca(other)
    mine = issue_cert(tmp_path / "pki", "pi-mine")
    foreign = issue_cert(other, "pi-theirs")

    def install(
        device_id: str, ca: Path, cert: Path, key: Path
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(INSTALL),
                "--broker",
                "mqtts://broker.invalid:8883",
                "--id",
                device_id,
                "--ca",
                str(ca),
                "--cert",
                str(cert),
                "--key",
                str(key),
                "--no-start",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    wrong_name = install("pi-other", mine.ca_path, mine.cert_path, mine.key_path)
    assert wrong_name.returncode == 1
    assert "is for 'pi-mine', not 'pi-other'" in wrong_name.stderr
    wrong_ca = install("pi-theirs", mine.ca_path, foreign.cert_path, foreign.key_path)
    assert wrong_ca.returncode == 1
    assert "not signed by --ca" in wrong_ca.stderr
    bad_id = install("pi/+", mine.ca_path, mine.cert_path, mine.key_path)
    assert bad_id.returncode == 1 and "invalid device id" in bad_id.stderr
    for out in (wrong_name, wrong_ca, bad_id):
        assert "==>" not in out.stdout, "nothing may be installed after a failed check"
