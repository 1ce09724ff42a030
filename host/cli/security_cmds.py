"""``edgetailor certs ...``, ``edgetailor keys ...`` and ``edgetailor token ...``: the CA, TLS
certificates, the signing key, and the service's API tokens.

Every certs/keys command prints where its files went and their modes, because the next step is
copying them to the broker and the boards (see deploy/mosquitto/README.md). ``token create`` prints
the token once: the database keeps only its hash.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import stat
from pathlib import Path
from typing import Annotated

import typer

from host.cli.connection import Connection, JsonOpt, connection_options
from host.cli.main import app
from host.security import (
    HOST_IDENTITY,
    Scope,
    default_keys_dir,
    default_pki_dir,
    init_ca,
    init_signing_key,
    issue_cert,
    render_acl,
    revoke_cert,
)

logger = logging.getLogger(__name__)

certs_app = typer.Typer(
    help="Certificates for mutual TLS to the broker: a CA, the broker, the host and each device.",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="The Ed25519 key the host signs every command and manifest with.", no_args_is_help=True
)
token_app = typer.Typer(
    help="API tokens of `edgetailor serve`, each with a scope: read < operate < admin.",
    no_args_is_help=True,
)
app.add_typer(certs_app, name="certs")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="PKI directory (default: $EDGETAILOR_HOME/pki, ~/.edgetailor/pki)."),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace existing files.")]


def _show(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    typer.echo(f"  {oct(mode)[2:]:>4}  {path}")


@certs_app.command("init")
def certs_init(directory: DirOption = None, force: ForceOption = False) -> None:
    """Create the CA (ca.crt, ca.key, crl.pem). Keep ca.key on the host, never on a board."""
    pki = directory or default_pki_dir()
    ca = init_ca(pki, force=force)
    typer.echo(f"CA created in {pki}:")
    for path in (ca.cert_path, ca.key_path, ca.crl_path):
        _show(path)
    typer.echo(
        "next: `edgetailor certs server --hostname BROKER_NAME`, `edgetailor certs issue --host`"
    )


@certs_app.command("issue")
def certs_issue(
    device_id: Annotated[
        str | None,
        typer.Argument(help="Device id; it becomes the certificate's common name and MQTT user."),
    ] = None,
    host: Annotated[
        bool,
        typer.Option(
            "--host", help=f"Issue the host orchestrator's certificate ({HOST_IDENTITY})."
        ),
    ] = False,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
    directory: DirOption = None,
    force: ForceOption = False,
) -> None:
    """Issue a client certificate for a device (or, with --host, for the orchestrator)."""
    pki = directory or default_pki_dir()
    if host:
        issued = issue_cert(pki, device_id or HOST_IDENTITY, kind="host", days=days, force=force)
    else:
        if device_id is None:
            raise typer.BadParameter(
                "give a DEVICE_ID, or --host for the orchestrator's certificate"
            )
        issued = issue_cert(pki, device_id, kind="device", days=days, force=force)
    typer.echo(f"{issued.kind} certificate for {issued.common_name!r}:")
    for path in (issued.cert_path, issued.key_path, issued.ca_path):
        _show(path)
    typer.echo(
        f"use: --tls-ca {issued.ca_path} --tls-cert {issued.cert_path} --tls-key {issued.key_path}"
    )


@certs_app.command("server")
def certs_server(
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="DNS name or IP the boards use for the broker (repeatable); localhost and "
            "127.0.0.1 are always included.",
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 825,
    directory: DirOption = None,
    force: ForceOption = False,
) -> None:
    """Issue the broker's certificate (server.crt, server.key) for Mosquitto's TLS listener."""
    pki = directory or default_pki_dir()
    issued = issue_cert(pki, kind="server", hosts=hostname or [], days=days, force=force)
    typer.echo("broker certificate:")
    for path in (issued.cert_path, issued.key_path, issued.ca_path):
        _show(path)
    typer.echo("the key must be readable by the mosquitto user: chown mosquitto: server.key")


@certs_app.command("revoke")
def certs_revoke(
    device_id: Annotated[str, typer.Argument(help="Device whose certificate is revoked.")],
    directory: DirOption = None,
) -> None:
    """Put a device's certificate on crl.pem (a lost or stolen board); then restart Mosquitto."""
    pki = directory or default_pki_dir()
    crl = revoke_cert(pki, device_id)
    typer.echo(f"revoked {device_id!r}; copy the new revocation list to the broker and restart it:")
    _show(crl)


@certs_app.command("acl")
def certs_acl(
    base: Annotated[str, typer.Option(help="Base topic the fleet uses.")] = "edgetailor",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of printing."),
    ] = None,
) -> None:
    """Print (or write) the Mosquitto ACL file for a base topic."""
    text = render_acl(base)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    typer.echo(f"ACL written to {output}")


@keys_app.command("init")
def keys_init(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Key directory (default: $EDGETAILOR_HOME/keys)."),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Create the host's signing key pair ahead of time (otherwise it is made on first use); give
    signing.pub to each agent as its trust key to pin it explicitly."""
    keys = directory or default_keys_dir()
    pair = init_signing_key(keys, force=force)
    typer.echo(f"signing key (key id {pair.key_id}):")
    _show(pair.private_path)
    _show(pair.public_path)


KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--signing-key",
        help="The host key (default: $EDGETAILOR_HOME/keys/signing.key, made on first use).",
    ),
]


@keys_app.command("rotate")
def keys_rotate(signing_key: KeyOption = None) -> None:
    """Make a new host key; the old one signs each device a rotation to it, then is retired.

    Every host process on the database picks the new key up. A device whose birth still reports
    the old key id is sent a rotate_key command signed with the old key (and its other commands
    are signed with the old key until it confirms); once no known device pins the old key, the
    command driver deletes it.
    """
    from host.commands.keys import rotate_key

    rotation = rotate_key(signing_key)
    typer.echo(f"host key rotated: {rotation.previous_key_id} -> {rotation.key_id}")
    _show(rotation.path)
    typer.echo(f"the previous key is kept until no device pins it: {rotation.previous_path}")
    typer.echo(
        "agents started with --trust-key keep the key a signed rotation gave them; give new "
        f"agents {rotation.path.with_suffix('.pub')}"
    )


@keys_app.command("status")
@connection_options("db")
def keys_status(conn: Connection, signing_key: KeyOption = None) -> None:
    """The host key, the previous keys kept for a rotation, and which devices pin which key."""
    from host.commands.keys import HostKeys

    keys = HostKeys(signing_key)
    typer.echo(f"host key {keys.key_id}: {keys.path}")
    with conn.store() as store:
        pinned: dict[str, list[str]] = {}
        for device in store.list_devices():
            key_id = (device.birth or {}).get("host_key_id") or "none yet"
            pinned.setdefault(key_id, []).append(device.device_id)
    for key_id in [keys.key_id, *keys.previous]:
        role = "current" if key_id == keys.key_id else "previous"
        devices = pinned.pop(key_id, [])
        typer.echo(f"  {role} {key_id}: {len(devices)} devices {', '.join(devices[:10])}")
    for key_id, devices in sorted(pinned.items()):
        typer.echo(f"  {key_id} (not held here): {len(devices)} devices {', '.join(devices[:10])}")


# -- API tokens --------------------------------------------------------------------------------

ScopeOption = Annotated[
    Scope,
    typer.Option(
        "--scope",
        help="read: every GET; operate: also bench, upload, deploy, rollback, cancel; admin: "
        "also campaigns that run code of an allowed module",
    ),
]


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@token_app.command("create")
@connection_options("db")
def token_create(
    conn: Connection,
    scope: ScopeOption = Scope.READ,
    name: Annotated[str, typer.Option("--name", help="a label `token list` shows")] = "",
) -> None:
    """Make a token for the service on this database; it is printed once, on stdout."""
    from host.store.service import ServiceStore

    with conn.store() as store:
        info, token = ServiceStore(store).create_token(scope, name=name)
    typer.echo(f"token {info.token_id} ({info.scope.value}) for {store.safe_url()}:", err=True)
    typer.echo(token)


@token_app.command("list")
@connection_options("db")
def token_list(
    conn: Connection,
    revoked: Annotated[bool, typer.Option("--revoked", help="list revoked tokens too")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The tokens in use (id, scope, name, dates); never the tokens themselves."""
    from host.store.service import ServiceStore

    with conn.store() as store:
        tokens = ServiceStore(store).list_tokens(include_revoked=revoked)
    if as_json:
        typer.echo(json.dumps([
            {"token_id": t.token_id, "scope": t.scope.value, "name": t.name, "created": t.created,
             "revoked": t.revoked} for t in tokens
        ], indent=2))  # fmt: skip
        return
    for t in tokens:
        state = f"revoked {_when(t.revoked)}" if t.revoked is not None else "in use"
        typer.echo(f"{t.token_id}  {t.scope.value:<7}  {_when(t.created)}  {state:<24}  {t.name}")
    if not tokens:
        typer.echo("no token in use: `edgetailor token create --scope read` makes one", err=True)


@token_app.command("revoke")
@connection_options("db")
def token_revoke(
    conn: Connection,
    token_id: Annotated[str, typer.Argument(help="the id `token list` shows")],
) -> None:
    """Revoke a token: the service refuses it from its next request on."""
    from host.store.service import ServiceStore

    with conn.store() as store:
        info = ServiceStore(store).revoke_token(token_id)
    typer.echo(f"token {info.token_id} ({info.scope.value}) revoked")
