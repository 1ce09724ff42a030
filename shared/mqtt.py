"""The one paho-mqtt client factory of host and agent: protocol, credentials, TLS, will, no Nagle.

Both sides talk MQTT 3.1.1 with clean sessions: durability comes from the host's re-sends and the
agent's outbox, not from broker sessions, so a broker that forgets a session (a restart, a clustered
broker moving a client) loses nothing, and the broker holds no per-device state. Callbacks stay the
caller's business.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

from shared.broker_url import BrokerAddress, TlsOptions
from shared.errors import ConfigError
from shared.transfer import no_delay


def make_client(
    client_id: str,
    broker: BrokerAddress,
    tls: TlsOptions | None = None,
    *,
    will: tuple[str, bytes | str, int] | None = None,
    reconnect_on_failure: bool = True,
) -> mqtt.Client:
    """A paho client for ``broker``, not yet connected.

    ``will`` is (topic, payload, qos), published retained by the broker when the connection dies.
    TLS is used when the URL says ``mqtts://`` or TLS files are given; files that cannot be loaded
    raise ConfigError naming them.
    """
    tls = (tls or TlsOptions()).check()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=reconnect_on_failure,
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls or tls.enabled:
        try:
            client.tls_set(ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the TLS files {tls}: {exc}") from exc
    if will is not None:
        topic, payload, qos = will
        client.will_set(topic, payload, qos=qos, retain=True)
    # Chunk requests and acks are small: do not let Nagle's algorithm hold them back.
    client.on_socket_open = no_delay
    return client
