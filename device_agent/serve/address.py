"""``--serve`` addresses: ``unix:/run/edgetailor/agent.sock`` or ``127.0.0.1:8470``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError


@dataclass(frozen=True)
class ServeAddress:
    unix_path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    @property
    def loopback(self) -> bool:
        if self.is_unix:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.is_unix else f"{self.host}:{self.port}"


def parse_serve_address(text: str) -> ServeAddress:
    """``unix:PATH`` (relative paths are made absolute) or ``HOST:PORT``."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(
                f"--serve {text!r}: give a socket path, e.g. unix:/run/edgetailor/agent.sock"
            )
        return ServeAddress(unix_path=Path(path).expanduser().absolute())
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            f"--serve {text!r}: use unix:/path/to.sock or HOST:PORT, e.g. 127.0.0.1:8470"
        )
    return ServeAddress(host=host, port=int(port_text))
