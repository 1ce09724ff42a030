"""Parse ``--broker`` URLs (``mqtt://host:port``, ``mqtts://host:port``) and TLS options."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError


@dataclass(frozen=True)
class TlsOptions:
    """Files for TLS to the broker; ``cert``+``key`` make it mutual TLS."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None

    def check(self) -> TlsOptions:
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        return self


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://[user:pass@]host[:1883]`` or ``mqtts://host[:8883]``; a bare ``host:port`` works too."""
    if "://" not in url:
        url = "mqtt://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ConfigError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ConfigError(f"broker URL {url!r} names no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has an invalid port") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
