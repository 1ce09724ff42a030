"""A TCP proxy a test controls, to cut the network between an agent and its broker.

``cut()`` blackholes the link: bytes on open connections are read and dropped and new connections
are accepted but nothing flows, as when a cable is pulled or a route disappears (no RST, so only
keepalives notice). ``restore()`` resets the connections that lived through the cut, as the peers'
stacks would once packets flow again, and forwards new connections normally.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Self

logger = logging.getLogger(__name__)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        with self._lock:
            stale, self._sockets = self._sockets, set()
        for sock in stale:
            _close(sock)
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.restore()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self._cut.is_set():
                self._track(client)
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            self._track(client, upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._sockets.update(socks)

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if self._cut.is_set():
                continue  # blackholed: the bytes vanish
            try:
                dst.sendall(data)
            except OSError:
                break
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
