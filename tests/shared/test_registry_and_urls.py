from __future__ import annotations

import pytest

from shared.broker_url import TlsOptions, parse_broker_url
from shared.errors import ConfigError, DuplicateEntryError, UnknownEntryError
from shared.registry import Registry


def test_a_registry_rejects_duplicates_and_names_known_keys_on_a_miss() -> None:
    reg: Registry[str, int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(DuplicateEntryError):
        reg.add("a", 2)
    with pytest.raises(UnknownEntryError, match="known: a"):
        reg.get("b")


def test_broker_urls_parse_with_defaults_and_reject_nonsense() -> None:
    assert parse_broker_url("mqtt://127.0.0.1").port == 1883
    tls = parse_broker_url("mqtts://broker.local")
    assert (tls.port, tls.tls) == (8883, True)
    assert parse_broker_url("localhost:1999").port == 1999
    creds = parse_broker_url("mqtt://u:p%40ss@h:1")
    assert (creds.username, creds.password) == ("u", "p@ss")
    with pytest.raises(ConfigError):
        parse_broker_url("http://x")
    with pytest.raises(ConfigError):
        parse_broker_url("mqtt://h:notaport")
    with pytest.raises(ConfigError):
        TlsOptions(cert="c").check()
