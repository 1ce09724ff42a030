"""Whom the agent trusts, and how it proves who it is: the pinned host key, the replay window of
the host's command sequence, and the device's own signing key.

Layout under the data dir::

    keys/device.key     this device's Ed25519 private key (PEM, mode 0600), made on first start;
    keys/device.pub     it signs everything the agent sends, and the host pins it on first birth
    trust/host.json     the pinned host key: {"key": base64, "source": ..., "history": [...]}
    trust/replay.json   the replay window of the host's sequence numbers (shared.signing)

A command is admitted (:meth:`HostTrust.admit`) when its signature verifies with the pinned key,
it names this device, it has not expired, and its sequence number is new to the window. Without a
pinned key, the first command whose signature is valid pins its key (trust on first use): the
agent logs the key id once, and every other key is refused from then on. ``--trust-key FILE`` pins
a key explicitly instead. A :class:`shared.messages.RotateKeyCmd` signed with the pinned key moves
the pin to the key it names (:meth:`HostTrust.rotate`); the pin's history remembers the keys it
came from, so restarting with the ``--trust-key`` the chain began with keeps the rotated key.

Every file is written atomically (shared.fsutil.atomic_write); the window is written before the
command it admits runs, so a replay after a crash is still refused.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import (
    ConfigError,
    ReplayError,
    SignatureError,
    UntrustedKeyError,
    ValidationError,
)
from shared.fsutil import atomic_write
from shared.messages import Message
from shared.signing import (
    ReplayWindow,
    Signer,
    key_id_of,
    load_public_key,
    public_key_b64,
    public_key_from_b64,
    save_public_key,
    verify_message,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 16  # previous pins remembered (a rotation chain longer than this is unusual)
PIN_NOTICE = "pinned host key %s on first use; to pin explicitly, start with --trust-key"


class Admission(Enum):
    """What :meth:`HostTrust.admit` decided about a command that passed every check."""

    NEW = "new"  # a sequence number never seen: run it (after :meth:`HostTrust.accept`)
    SEEN = "seen"  # a sequence number seen before: a duplicate if the journal knows the command


@dataclass
class Pin:
    key: str  # base64 raw Ed25519 public key
    source: str  # "trust-key" | "first-use" | "rotation"
    history: list[str] = field(default_factory=list)  # the keys this pin replaced, oldest first

    @property
    def key_id(self) -> str:
        return key_id_of(self.key)


class HostTrust:
    """The pinned host key, the replay window and the device key of one data dir (thread-safe)."""

    def __init__(self, data_dir: Path, trust_key: Path | None = None, window: int = 1024) -> None:
        self.keys_dir = data_dir / "keys"
        self.trust_dir = data_dir / "trust"
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.trust_dir.mkdir(parents=True, exist_ok=True)
        self._pin_path = self.trust_dir / "host.json"
        self._window_path = self.trust_dir / "replay.json"
        self._lock = threading.Lock()
        self.signer = self._device_signer()
        self.pin = self._read_pin()
        if trust_key is not None:
            self._pin_explicitly(public_key_b64(load_public_key(trust_key)))
        self.window = self._read_window(window)

    # -- the device key --------------------------------------------------------------------------
    def _device_signer(self) -> Signer:
        private = self.keys_dir / "device.key"
        if private.exists():
            return Signer.from_file(private)
        from cryptography.hazmat.primitives import serialization

        signer = Signer.generate()
        pem = signer.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(private, pem, mode=0o600)  # 0600 from the start: never readable by others
        save_public_key(signer.private_key.public_key(), self.keys_dir / "device.pub")
        logger.info("made this device's signing key %s in %s", signer.key_id, private)
        return signer

    # -- the pin ---------------------------------------------------------------------------------
    def _read_pin(self) -> Pin | None:
        try:
            raw = json.loads(self._pin_path.read_text("utf-8"))
            pin = Pin(str(raw["key"]), str(raw["source"]), [str(k) for k in raw.get("history", [])])
            public_key_from_b64(pin.key)  # a valid key, or the file is damaged
            return pin
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, SignatureError) as exc:
            raise ConfigError(
                f"the pinned host key {self._pin_path} is unreadable ({exc}); restore it, or "
                "remove it and start with --trust-key to pin the host key again"
            ) from exc

    def _write_pin(self, pin: Pin) -> None:
        data = {"key": pin.key, "source": pin.source, "history": pin.history[-HISTORY_LIMIT:]}
        atomic_write(self._pin_path, json.dumps(data).encode("utf-8"))
        self.pin = pin

    def _pin_explicitly(self, key: str) -> None:
        pin = self.pin
        if pin is not None and (pin.key == key or key in pin.history):
            if pin.key != key:
                logger.info(
                    "--trust-key %s was rotated to host key %s by a signed rotation; keeping it",
                    key_id_of(key),
                    pin.key_id,
                )
            return
        if pin is not None:
            logger.warning(
                "--trust-key %s replaces the pinned host key %s (%s)",
                key_id_of(key),
                pin.key_id,
                pin.source,
            )
        self._write_pin(Pin(key, "trust-key"))

    @property
    def key_id(self) -> str | None:
        """The pinned host key's id (shared.signing.key_id_of), None before the first command."""
        pin = self.pin
        return pin.key_id if pin is not None else None

    def public_key(self) -> Ed25519PublicKey | None:
        """The pinned host key, which manifests must be signed by too; None while nothing is pinned."""
        pin = self.pin
        return public_key_from_b64(pin.key) if pin is not None else None

    def rotate(self, key: str) -> Pin:
        """Pin ``key`` instead of the current key (which signed the rotation the caller checked)."""
        try:
            public_key_from_b64(key)
        except SignatureError as exc:
            raise ValidationError(f"the rotation names no Ed25519 key: {exc}") from exc
        with self._lock:
            current = self.pin
            if current is None:
                raise UntrustedKeyError("no host key is pinned yet: nothing to rotate from")
            if current.key == key:
                return current
            history = [k for k in current.history if k != key] + [current.key]
            self._write_pin(Pin(key, "rotation", history))
            logger.warning("host key rotated: %s -> %s", current.key_id, key_id_of(key))
            return self.pin  # type: ignore[return-value]

    # -- the replay window -----------------------------------------------------------------------
    def _read_window(self, size: int) -> ReplayWindow:
        try:
            return ReplayWindow.from_json(self._window_path.read_bytes())
        except FileNotFoundError:
            return ReplayWindow(size)
        except (OSError, ValidationError) as exc:
            # Refusing every command forever would be worse: an empty window only means commands
            # the host already sent once could run again, which the journal still prevents.
            logger.error(
                "the replay window %s is unreadable (%s); starting afresh", self._window_path, exc
            )
            return ReplayWindow(size)

    # -- admitting commands ----------------------------------------------------------------------
    def admit(self, message: Message, device_id: str) -> Admission:
        """Check a command's signature, address, expiry and sequence; raise SignatureError (its
        ``code`` says why) or say whether its sequence number is new. Pins the key of the first
        validly signed command when none is pinned. Nothing is recorded but that pin: call
        :meth:`accept` before the command runs."""
        with self._lock:
            pin = self.pin
            key = verify_message(
                message, trusted={pin.key} if pin is not None else None, device_id=device_id
            )
            seq = message.auth.seq if message.auth is not None else None
            if seq is None:
                raise ReplayError(f"{message.schema} {message.msg_id} carries no sequence number")
            new = self.window.is_new(seq)
            if pin is None:
                self._write_pin(Pin(key, "first-use"))
                logger.warning(PIN_NOTICE, key_id_of(key))
            return Admission.NEW if new else Admission.SEEN

    def accept(self, message: Message) -> None:
        """Record the command's sequence number as used, durably, before the command runs."""
        seq = message.auth.seq if message.auth is not None else None
        if seq is None:
            return
        with self._lock:
            self.window.accept(seq)
            atomic_write(self._window_path, self.window.to_json())


__all__ = ["PIN_NOTICE", "Admission", "HostTrust", "Pin"]
