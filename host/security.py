"""Security material: a private CA, TLS certificates, Mosquitto configs, the signing key, and the
scopes of the service's API tokens (the tokens themselves live in host.store.service).

The broker authenticates every client by its certificate (mutual TLS) and takes the certificate's
common name as the MQTT user name (``use_identity_as_username``); the ACL then confines a device to
``{base}/v1/dev/{its id}/...``. So the common name of a device certificate *is* its device id, and
the host's certificate carries :data:`HOST_IDENTITY`, the only identity allowed to publish commands.

Files of one PKI directory (``edgetailor certs init`` / ``certs issue`` / ``certs server``)::

    ca.crt  ca.key                   the CA (keep ca.key off the broker and off the boards)
    crl.pem                          revocation list the broker loads (``certs revoke``)
    server.crt  server.key           the broker's certificate (SAN: localhost, 127.0.0.1, --hostname)
    edgetailor-host.crt/.key         the host orchestrator's client certificate
    devices/{id}.crt  devices/{id}.key  one client certificate per board

Keys are EC P-256: Mosquitto 2.0 / OpenSSL 3 and Python's ``ssl`` accept Ed25519 certificates too,
but only over TLS 1.3, and older boards (OpenSSL 1.1.0 and earlier, mbedTLS builds) cannot use them;
P-256 works everywhere. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shared.errors import ConfigError
from shared.fsutil import atomic_write
from shared.topics import DEFAULT_BASE, Topics, check_device_id

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

logger = logging.getLogger(__name__)

HOST_IDENTITY = "edgetailor-host"
CertKind = Literal["device", "host", "server"]
CERT_KINDS: tuple[str, ...] = ("device", "host", "server")
CA_DAYS = 3650
LEAF_DAYS = 825
# Clock skew between a freshly booted board (no RTC, NTP not yet synced) and the host.
BACKDATE = dt.timedelta(hours=1)
DEFAULT_TLS_PORT = 8883


# -- API token scopes ----------------------------------------------------------------------------


class Scope(StrEnum):
    """What an API token of `edgetailor serve` may do; each scope includes the ones before it.

    read: every GET; operate: also benchmarks, uploads, deployments, rollbacks and cancelling;
    admin: also campaigns that run code of a module the operator allowed (``serve --allow-module``).
    """

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Scope).index(self)

    def allows(self, needed: Scope) -> bool:
        return self.rank >= needed.rank


def edgetailor_home() -> Path:
    """Where the CLI keeps its files unless told otherwise (``$EDGETAILOR_HOME``, else ~/.edgetailor)."""
    return Path(os.environ.get("EDGETAILOR_HOME") or Path.home() / ".edgetailor")


def default_pki_dir() -> Path:
    return edgetailor_home() / "pki"


def default_keys_dir() -> Path:
    return edgetailor_home() / "keys"


@dataclass(frozen=True)
class CertificateAuthority:
    cert_path: Path
    key_path: Path
    crl_path: Path


@dataclass(frozen=True)
class IssuedCert:
    """One issued certificate: what a client passes as --tls-ca/--tls-cert/--tls-key."""

    common_name: str
    kind: str
    cert_path: Path
    key_path: Path
    ca_path: Path


@dataclass(frozen=True)
class SigningKeyPair:
    private_path: Path
    public_path: Path
    key_id: str


# -- files ---------------------------------------------------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start, so the key is never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data, mode=0o644)


def _new_key() -> EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_paths(pki_dir: Path) -> CertificateAuthority:
    return CertificateAuthority(pki_dir / "ca.crt", pki_dir / "ca.key", pki_dir / "crl.pem")


def load_ca(pki_dir: str | Path) -> tuple[x509.Certificate, EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = _ca_paths(Path(pki_dir))
    if not paths.cert_path.exists() or not paths.key_path.exists():
        raise ConfigError(f"no CA in {pki_dir}: run `edgetailor certs init --dir {pki_dir}` first")
    try:
        cert = x509.load_pem_x509_certificate(paths.cert_path.read_bytes())
        key = serialization.load_pem_private_key(paths.key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CA in {pki_dir}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{paths.key_path} is not an EC private key made by `certs init`")
    return cert, key


# -- the CA --------------------------------------------------------------------------------------


def init_ca(
    pki_dir: str | Path,
    *,
    common_name: str = "edgetailor CA",
    days: int = CA_DAYS,
    force: bool = False,
) -> CertificateAuthority:
    """Create a CA (certificate, key and an empty CRL) in ``pki_dir``.

    Refuses to replace an existing CA unless ``force``: a new CA orphans every certificate already
    on the boards and the broker.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    pki = Path(pki_dir)
    paths = _ca_paths(pki)
    if paths.key_path.exists() and not force:
        raise ConfigError(
            f"a CA already exists in {pki}; replacing it invalidates every issued certificate. "
            "Use another --dir, or --force if that is what you want"
        )
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(paths.key_path, _key_pem(key))
    _write_public(paths.cert_path, _cert_pem(cert))
    _write_crl(pki, cert, key, revoked=[])
    logger.info("created CA %r in %s", common_name, pki)
    return paths


def _write_crl(
    pki: Path,
    ca_cert: x509.Certificate,
    ca_key: EllipticCurvePrivateKey,
    revoked: list[x509.RevokedCertificate],
) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        # A CRL past next_update makes OpenSSL refuse every client; the broker reloads it on
        # restart, so give it as long as the CA lives.
        .next_update(ca_cert.not_valid_after_utc)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    path = _ca_paths(pki).crl_path
    from cryptography.hazmat.primitives import serialization

    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


# -- leaf certificates ---------------------------------------------------------------------------


def leaf_paths(pki_dir: str | Path, common_name: str, kind: str) -> tuple[Path, Path]:
    pki = Path(pki_dir)
    if kind == "device":
        return pki / "devices" / f"{common_name}.crt", pki / "devices" / f"{common_name}.key"
    if kind == "server":
        return pki / "server.crt", pki / "server.key"
    return pki / f"{common_name}.crt", pki / f"{common_name}.key"


def _check_leaf_name(common_name: str, kind: str) -> str:
    if kind not in CERT_KINDS:
        raise ConfigError(f"unknown certificate kind {kind!r}: use one of {', '.join(CERT_KINDS)}")
    if kind == "device":
        check_device_id(common_name)
        if common_name == HOST_IDENTITY:
            raise ConfigError(
                f"{HOST_IDENTITY!r} is the host's identity and may publish commands to every "
                "device; pick another device id"
            )
    elif kind == "host":
        # The host's name is also an MQTT user name in the ACL, so the same safety rules apply.
        check_device_id(common_name)
    elif not common_name or "/" in common_name:
        raise ConfigError(f"invalid server name {common_name!r}")
    return common_name


def issue_cert(
    pki_dir: str | Path,
    common_name: str | None = None,
    kind: CertKind = "device",
    hosts: list[str] | tuple[str, ...] = (),
    *,
    days: int = LEAF_DAYS,
    force: bool = False,
) -> IssuedCert:
    """Issue a certificate signed by the CA in ``pki_dir``.

    ``kind="device"``: a client certificate whose common name is the device id. ``kind="host"``:
    the orchestrator's client certificate (common name :data:`HOST_IDENTITY` by default).
    ``kind="server"``: the broker's certificate, valid for localhost, 127.0.0.1 and ``hosts``
    (DNS names or IP addresses the boards use to reach the broker).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if common_name is None:
        if kind == "device":
            raise ConfigError("a device certificate needs the device id as its common name")
        common_name = HOST_IDENTITY if kind == "host" else "edgetailor-broker"
    _check_leaf_name(common_name, kind)
    cert_path, key_path = leaf_paths(pki_dir, common_name, kind)
    if cert_path.exists() and not force:
        raise ConfigError(
            f"{cert_path} already exists; use --force to replace it (the old certificate stays "
            "valid until it expires or you run `edgetailor certs revoke`)"
        )
    ca_cert, ca_key = load_ca(pki_dir)
    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if kind == "server":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_san_entries(["localhost", "127.0.0.1", *hosts])),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, _cert_pem(cert))
    logger.info("issued %s certificate %r: %s", kind, common_name, cert_path)
    return IssuedCert(common_name, kind, cert_path, key_path, _ca_paths(Path(pki_dir)).cert_path)


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if any(c in host for c in "/ :@"):
                raise ConfigError(
                    f"--hostname {host!r} is neither an IP address nor a DNS name"
                ) from None
            entries.append(x509.DNSName(host))
    return entries


def revoke_cert(pki_dir: str | Path, common_name: str, kind: CertKind = "device") -> Path:
    """Add the certificate on disk for ``common_name`` to ``crl.pem``; returns the CRL's path.

    The broker reads the CRL when it starts, so restart Mosquitto after revoking.
    """
    from cryptography import x509

    pki = Path(pki_dir)
    cert_path, _ = leaf_paths(pki, _check_leaf_name(common_name, kind), kind)
    if not cert_path.exists():
        raise ConfigError(f"no certificate for {common_name!r} at {cert_path}; nothing to revoke")
    ca_cert, ca_key = load_ca(pki)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    crl_path = _ca_paths(pki).crl_path
    revoked: list[x509.RevokedCertificate] = []
    if crl_path.exists():
        revoked = list(x509.load_pem_x509_crl(crl_path.read_bytes()))
    if any(entry.serial_number == cert.serial_number for entry in revoked):
        return crl_path
    revoked.append(
        x509.RevokedCertificateBuilder()
        .serial_number(cert.serial_number)
        .revocation_date(dt.datetime.now(dt.UTC) - BACKDATE)
        .build()
    )
    logger.info("revoked %s certificate %r (serial %x)", kind, common_name, cert.serial_number)
    return _write_crl(pki, ca_cert, ca_key, revoked)


# -- manifest signing key ------------------------------------------------------------------------


def init_signing_key(keys_dir: str | Path, *, force: bool = False) -> SigningKeyPair:
    """Create the Ed25519 key pair the host signs manifests with (agents get ``signing.pub``)."""
    from shared.signing import generate_key, key_id_of, save_private_key, save_public_key

    keys = Path(keys_dir)
    private_path, public_path = keys / "signing.key", keys / "signing.pub"
    if private_path.exists() and not force:
        raise ConfigError(
            f"{private_path} already exists; agents trust its public half, so replacing it makes "
            "them refuse every new manifest. Use --force if that is what you want"
        )
    keys.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    # save_private_key chmods after writing; create the file 0600 first so it is never exposed.
    _write_private(private_path, b"")
    save_private_key(key, private_path)
    save_public_key(key.public_key(), public_path)
    return SigningKeyPair(private_path, public_path, key_id_of(key.public_key()))


# -- Mosquitto configuration ---------------------------------------------------------------------

ACL_HEADER = """\
# Mosquitto ACL for edgetailor, generated by host.security.render_acl (base topic {base!r}).
# Regenerate with:  python -c "from host.security import render_acl; print(render_acl())"
#
# Every client authenticates with a certificate and the listener sets use_identity_as_username,
# so %u below is the certificate's common name, i.e. the device id. Mosquitto denies what no line
# allows, which is how a device is kept off other devices' topics and off every cmd topic.
"""


def render_acl(base: str = DEFAULT_BASE, host_identity: str = HOST_IDENTITY) -> str:
    """The ACL file text: the host may do everything under the base; a device only its own part."""
    root = Topics(base).root
    check_device_id(host_identity)
    dev = f"{root}/dev/%u"
    lines = [
        ACL_HEADER.format(base=base),
        "# The host orchestrator: reads every device, publishes commands, artifact chunks and",
        "# its own availability.",
        f"user {host_identity}",
        f"topic readwrite {root}/#",
        "",
        "# Every device (pattern lines apply to every authenticated client).",
        "# Artifact chunks go out only for a command naming the artifact; the topic is shared, so",
        "# the broker fans one stream out to every device fetching it, and a device may read the",
        "# chunks others fetch meanwhile (docs/security.md). Commands are signed by the host key,",
        "# everything a device sends by its own key: the ACL keeps devices apart, signatures say",
        "# who sent what.",
        f"pattern read {root}/art/#",
        f"pattern read {root}/host/status",
        f"pattern read {dev}/cmd/+",
        f"pattern write {dev}/status",
        f"pattern write {dev}/birth",
        f"pattern write {dev}/telemetry",
        f"pattern write {dev}/resp/+",
        f"pattern write {dev}/xfer/req",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BrokerTlsFiles:
    cafile: str
    certfile: str
    keyfile: str
    crlfile: str | None
    acl_file: str


DEPLOY_FILES = BrokerTlsFiles(
    cafile="/etc/mosquitto/certs/ca.crt",
    certfile="/etc/mosquitto/certs/server.crt",
    keyfile="/etc/mosquitto/certs/server.key",
    crlfile="/etc/mosquitto/certs/crl.pem",
    acl_file="/etc/mosquitto/edgetailor.acl",
)


def render_mosquitto_tls_conf(
    files: BrokerTlsFiles = DEPLOY_FILES,
    *,
    port: int = DEFAULT_TLS_PORT,
    bind_address: str | None = None,
) -> str:
    """A Mosquitto 2.x listener that admits only clients holding a certificate from our CA."""
    listener = f"listener {port}" + (f" {bind_address}" if bind_address else "")
    lines = [
        "# Mosquitto 2.x: mutual-TLS listener for edgetailor, generated by",
        "# host.security.render_mosquitto_tls_conf. See deploy/mosquitto/README.md.",
        "",
        "# No client without a certificate, and no plain-TCP listener: a board's identity is its",
        "# certificate, so anything else could pretend to be any device.",
        "allow_anonymous false",
        f"acl_file {files.acl_file}",
        "# Chunk requests and acks are small: without this, Nagle's algorithm and delayed ACKs",
        "# hold each round trip for ~40 ms (bench/transfer.py measures 44 ms against 0.4 ms).",
        "set_tcp_nodelay true",
        "",
        listener,
        "protocol mqtt",
        f"cafile {files.cafile}",
        f"certfile {files.certfile}",
        f"keyfile {files.keyfile}",
    ]
    if files.crlfile:
        lines.append(f"crlfile {files.crlfile}")
    lines += [
        "tls_version tlsv1.2",
        "require_certificate true",
        "# The certificate's common name becomes the MQTT user name the ACL's %u refers to.",
        "use_identity_as_username true",
    ]
    return "\n".join(lines) + "\n"
