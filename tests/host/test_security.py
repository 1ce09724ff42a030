"""The CA, the certificates it issues, the signing key, the CLI around them and the shipped configs."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

import host.cli.security_cmds  # noqa: F401  (registers certs/keys on the app)
from host.cli.main import app
from host.security import (
    DEPLOY_FILES,
    HOST_IDENTITY,
    init_ca,
    init_signing_key,
    issue_cert,
    render_acl,
    render_mosquitto_tls_conf,
    revoke_cert,
)
from shared.errors import ConfigError, SignatureError
from shared.manifest import ArtifactManifest
from shared.signing import load_private_key, load_public_key, sign_manifest, verify_manifest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pki_dir = tmp_path_factory.mktemp("pki")
    init_ca(pki_dir)
    return pki_dir


def test_issued_certificates_chain_to_the_ca_and_private_keys_are_owner_only(pki: Path) -> None:
    ca = _cert(pki / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _mode(pki / "ca.key") == 0o600
    for issued in (
        issue_cert(pki, "pi-chain"),
        issue_cert(pki, kind="host", force=True),
        issue_cert(pki, kind="server", force=True),
    ):
        cert = _cert(issued.cert_path)
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert _mode(issued.key_path) == 0o600
        assert _mode(issued.cert_path) == 0o644


def test_openssl_verifies_the_certificates_the_way_mosquitto_will(pki: Path) -> None:
    device = issue_cert(pki, "pi-openssl")
    server = issue_cert(pki, kind="server", force=True)
    for purpose, issued in (("sslclient", device), ("sslserver", server)):
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-purpose",
                purpose,
                "-CAfile",
                str(pki / "ca.crt"),
                str(issued.cert_path),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_device_certificate_names_the_device_and_is_only_for_client_auth(pki: Path) -> None:
    cert = _cert(issue_cert(pki, "jetson-07").cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "jetson-07"
    usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert usages == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_host_certificate_carries_the_identity_the_acl_grants_commands_to(pki: Path) -> None:
    issued = issue_cert(pki, kind="host", force=True)
    assert issued.common_name == HOST_IDENTITY
    cn = _cert(issued.cert_path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == HOST_IDENTITY
    assert f"user {HOST_IDENTITY}\n" in render_acl()


def test_server_certificate_is_valid_for_loopback_and_every_given_hostname(pki: Path) -> None:
    issued = issue_cert(pki, kind="server", hosts=["broker.lan", "10.1.2.3", "::1"], force=True)
    san = (
        _cert(issued.cert_path)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "broker.lan"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.1.2.3",
        "::1",
    }


@pytest.mark.parametrize("bad_id", ["pi/+", "#", "", "a b", HOST_IDENTITY])
def test_device_id_unsafe_in_a_topic_or_equal_to_the_host_identity_is_refused(
    pki: Path, bad_id: str
) -> None:
    with pytest.raises(ConfigError):
        issue_cert(pki, bad_id)
    assert not (pki / "devices" / f"{bad_id}.key").exists()


def test_existing_ca_and_certificates_are_not_replaced_without_force(pki: Path) -> None:
    before = (pki / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        init_ca(pki)
    assert (pki / "ca.crt").read_bytes() == before
    issue_cert(pki, "pi-once")
    with pytest.raises(ConfigError, match="--force"):
        issue_cert(pki, "pi-once")
    assert issue_cert(pki, "pi-once", force=True).cert_path.exists()


def test_issuing_without_a_ca_tells_the_user_to_run_certs_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="certs init"):
        issue_cert(tmp_path, "pi-1")


def test_revoked_certificate_is_listed_on_the_crl_and_others_are_not(pki: Path) -> None:
    lost = _cert(issue_cert(pki, "pi-stolen").cert_path)
    kept = _cert(issue_cert(pki, "pi-kept").cert_path)
    crl = x509.load_pem_x509_crl(revoke_cert(pki, "pi-stolen").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(lost.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert crl.is_signature_valid(_cert(pki / "ca.crt").public_key())  # type: ignore[arg-type]
    revoke_cert(pki, "pi-stolen")  # twice is harmless
    assert len(list(x509.load_pem_x509_crl((pki / "crl.pem").read_bytes()))) == 1


def test_signing_key_pair_signs_manifests_that_agents_verify_with_the_public_half(
    tmp_path: Path,
) -> None:
    pair = init_signing_key(tmp_path / "keys")
    assert _mode(pair.private_path) == 0o600
    manifest = ArtifactManifest(sha256="ab" * 32, size_bytes=10, format="tflite", precision="fp32")
    signed = sign_manifest(manifest, load_private_key(pair.private_path))
    assert signed.key_id == pair.key_id
    verify_manifest(signed, load_public_key(pair.public_path), device_id="pi-1")
    other = init_signing_key(tmp_path / "other")
    with pytest.raises(SignatureError):
        verify_manifest(signed, load_public_key(other.public_path), device_id="pi-1")
    with pytest.raises(ConfigError, match="--force"):
        init_signing_key(tmp_path / "keys")


def test_cli_creates_ca_certificates_and_signing_key_and_prints_paths_and_modes(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    pki = tmp_path / "pki"
    steps = [
        ["certs", "init", "--dir", str(pki)],
        ["certs", "server", "--hostname", "broker.lan", "--dir", str(pki)],
        ["certs", "issue", "--host", "--dir", str(pki)],
        ["certs", "issue", "pi-cli", "--dir", str(pki)],
        ["keys", "init", "--dir", str(tmp_path / "keys")],
    ]
    outputs = []
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
        outputs.append(result.output)
    assert f"600  {pki / 'ca.key'}" in outputs[0]
    assert f"600  {pki / 'server.key'}" in outputs[1]
    assert f"--tls-cert {pki / 'edgetailor-host.crt'}" in outputs[2]
    assert f"600  {pki / 'devices' / 'pi-cli.key'}" in outputs[3]
    assert f"600  {tmp_path / 'keys' / 'signing.key'}" in outputs[4]
    refused = runner.invoke(app, ["certs", "issue", "--dir", str(pki)])
    assert refused.exit_code != 0 and "DEVICE_ID" in refused.output


def test_shipped_mosquitto_files_are_exactly_what_the_templates_render() -> None:
    assert (DEPLOY / "mosquitto" / "acl.conf").read_text() == render_acl()
    assert (DEPLOY / "mosquitto" / "mosquitto-tls.conf").read_text() == render_mosquitto_tls_conf()


def test_shipped_tls_config_admits_only_certificate_holders() -> None:
    lines = set((DEPLOY / "mosquitto" / "mosquitto-tls.conf").read_text().splitlines())
    assert {
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        f"acl_file {DEPLOY_FILES.acl_file}",
        "listener 8883",
    } <= lines
    assert not any(line.startswith("listener 1883") for line in lines)


def test_acl_for_another_base_topic_confines_devices_under_that_base() -> None:
    acl = render_acl("plant7")
    assert "pattern read plant7/v1/dev/%u/cmd/+" in acl
    assert "topic readwrite plant7/v1/#" in acl
    assert "edgetailor/" not in acl.replace("edgetailor-host", "")
    with pytest.raises(ConfigError):
        render_acl("plant/#")
