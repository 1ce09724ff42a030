"""How a command reaches the fleet, declared once: the ``Connection`` object and its options.

A command that talks to the broker, the database or the service takes one parameter
``conn: Connection`` and is decorated with ``@connection_options(...)``, naming the groups of
options it accepts. The decorator puts those options into the signature typer reads, so every
command spells them, their help and their defaults the same way, and builds the one typed object
from what was given before the command body runs:

    @app.command("status")
    @connection_options(*FLEET, "server")
    def status_cmd(conn: Connection, as_json: JsonOpt = False) -> None:
        with conn.store() as store, conn.fleet(store) as fleet: ...

Groups: ``broker`` (``--broker``, default ``$EDGETAILOR_BROKER`` else mqtt://127.0.0.1:1883),
``base_topic`` (``--base-topic``), ``db`` (``--db``), ``tls`` (``--tls-ca``, ``--tls-cert``,
``--tls-key``), ``signing_key`` (``--signing-key``) and ``server`` (``--server`` and ``--token``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from host.cli.client import ApiClient
from shared.broker_url import TlsOptions
from shared.topics import DEFAULT_BASE

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
BROKER_ENV = "EDGETAILOR_BROKER"

BrokerOpt = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar=BROKER_ENV,
        show_envvar=False,
        help=f"mqtt://[user:pass@]host[:port] or mqtts://... (default: ${BROKER_ENV}, "
        f"else {DEFAULT_BROKER})",
    ),
]
BaseTopicOpt = Annotated[str, typer.Option("--base-topic", help="MQTT base topic of the fleet")]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="SQLAlchemy URL (default $EDGETAILOR_DB, else sqlite in $EDGETAILOR_HOME, "
        "~/.edgetailor)",
    ),
]
TlsCaOpt = Annotated[
    str | None, typer.Option("--tls-ca", help="CA certificate (PEM) of the broker")
]
TlsCertOpt = Annotated[str | None, typer.Option("--tls-cert", help="client certificate (PEM)")]
TlsKeyOpt = Annotated[str | None, typer.Option("--tls-key", help="client key (PEM)")]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option("--signing-key", help="Ed25519 private key (PEM) to sign manifests"),
]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", help="URL of `edgetailor serve`: go through its API instead"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="API token for --server (default: $EDGETAILOR_TOKEN)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass(frozen=True)
class Connection:
    """Where the fleet is: broker, base topic, database, TLS files, signing key, service."""

    broker: str = DEFAULT_BROKER
    base_topic: str = DEFAULT_BASE
    db: str | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    signing_key: Path | None = None
    server: str | None = None
    token: str | None = None

    def store(self) -> Store:
        from host.store import Store

        return Store(self.db)

    def fleet(self, store: Store, **kw: Any) -> Fleet:
        """The fleet on this broker, recording into ``store`` (a context manager)."""
        from host.fleet import Fleet

        return Fleet(
            self.broker,
            self.base_topic,
            store=store,
            tls=self.tls,
            signing_key=self.signing_key,
            **kw,
        )

    def client(self, timeout: float = 60.0) -> ApiClient:
        """The service's API (``--server``), with ``--token`` or ``$EDGETAILOR_TOKEN``."""

        if self.server is None:
            raise ValueError("no --server given")
        return ApiClient(self.server, self.token, timeout=timeout)


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default
    )


GROUPS: dict[str, tuple[inspect.Parameter, ...]] = {
    "broker": (_option("broker", BrokerOpt, DEFAULT_BROKER),),
    "base_topic": (_option("base_topic", BaseTopicOpt, DEFAULT_BASE),),
    "db": (_option("db", DbOpt, None),),
    "tls": (
        _option("tls_ca", TlsCaOpt, None),
        _option("tls_cert", TlsCertOpt, None),
        _option("tls_key", TlsKeyOpt, None),
    ),
    "signing_key": (_option("signing_key", SigningKeyOpt, None),),
    "server": (_option("server", ServerOpt, None), _option("token", TokenOpt, None)),
}
# What a command that talks to the broker and the database takes.
FLEET = ("broker", "base_topic", "db", "tls")


def _build(values: dict[str, Any]) -> Connection:
    return Connection(
        broker=values.get("broker", DEFAULT_BROKER),
        base_topic=values.get("base_topic", DEFAULT_BASE),
        db=values.get("db"),
        tls=TlsOptions(values.get("tls_ca"), values.get("tls_cert"), values.get("tls_key")),
        signing_key=values.get("signing_key"),
        server=values.get("server"),
        token=values.get("token"),
    )


def connection_options(*groups: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the options of ``groups`` (all of them when none is named), delivered as
    its ``conn: Connection`` parameter."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown connection option groups {sorted(unknown)}")
    added = [param for group in (groups or tuple(GROUPS)) for param in GROUPS[group]]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        if "conn" not in signature.parameters:
            raise TypeError(f"{func.__name__} takes no `conn: Connection` parameter")
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != "conn"
        ]

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {p.name: kwargs.pop(p.name, p.default) for p in added}
            return func(*args, conn=_build(values), **kwargs)

        params = [*own, *added]
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
