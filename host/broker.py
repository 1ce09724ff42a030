"""An embedded MQTT broker (amqtt) for `edgetailor broker` and `edgetailor demo`.

Mosquitto is the broker to use in production (about 4x faster on large chunks); this one exists so
that a fresh machine can run the whole loop with nothing but the Python install. amqtt keeps retained
messages and delivers Last Wills, which the contract relies on (device birth/status, host status).
``EmbeddedBroker`` runs the asyncio broker on a daemon thread so it can live inside another program.

amqtt 0.12.1 hands every client, as it connects, the retained messages of every topic filter any
client ever subscribed to, whether or not this client subscribed to it: a fresh client watching an
unrelated topic received the fleet's retained host status and every device's birth and status.
The broker here delivers retained messages only for the client's own subscriptions; the report for
amqtt, with a reproduction, is docs/upstream/amqtt-retained-messages.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, Self

from host.errors import ConfigError, HostError

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 15.0


class BrokerError(HostError):
    """The embedded broker could not start or stop."""


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt configuration: one TCP listener, anonymous clients, no $SYS chatter."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "timeout_disconnect_delay": 0,
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _broker_class() -> type[Any]:
    """amqtt's Broker, delivering retained messages only to the subscriptions they match."""
    from amqtt.broker import Broker
    from amqtt.session import Session

    class OwnSubscriptionsBroker(Broker):  # type: ignore[misc]
        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Session
        ) -> None:
            # amqtt calls this on CONNECT for every filter in its broker-wide table (which keeps
            # filters whose subscribers left), and after a SUBSCRIBE for the new filter. Only the
            # filters this client holds may bring it retained messages.
            holders = self._subscriptions.get(subscription[0], ())
            if any(held.client_id == session.client_id for held, _qos in holders):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return OwnSubscriptionsBroker


def _port_is_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """amqtt broker on a background thread; use as a context manager or call start()/stop()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not 0 < port < 65536:
            raise ConfigError(f"broker port {port} is outside 1..65535")
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if self._thread is not None:
            return self
        if _port_is_taken(self.host, self.port):
            raise BrokerError(
                f"cannot start the embedded broker: something already listens on "
                f"{self.host}:{self.port}; stop it or pick another --port"
            )
        self._thread = threading.Thread(target=self._run, name="edgetailor-broker", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT_S):
            self._thread = None  # so that a later start() tries again instead of claiming success
            raise BrokerError(f"the embedded broker did not start within {_START_TIMEOUT_S:.0f} s")
        if self._error is not None:
            self._thread = None
            raise BrokerError(
                f"the embedded broker failed to start on {self.host}:{self.port}: {self._error}"
            ) from self._error
        logger.info("embedded broker listening on %s", self.url)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_broker())
        except BaseException as exc:  # noqa: BLE001 -- reported to the starting thread
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _start_broker(self) -> None:
        self._broker = _broker_class()(broker_config(self.host, self.port))
        await self._broker.start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._broker is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            try:
                future.result(timeout=10)
            except Exception as exc:  # noqa: BLE001 -- shutting down anyway; report, don't mask the caller's error
                logger.warning("embedded broker shutdown: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._broker = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until Ctrl-C, then shut the broker down."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            logger.info("stopping the embedded broker")
        finally:
            self.stop()
