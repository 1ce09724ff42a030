"""The host's Ed25519 signing keys: the current one, and the previous ones a rotation keeps.

The host signs every command envelope and every manifest it sends with its key (the envelope
signature carries a context string, so the two can never be confused). The key is made on first
use at ``$EDGETAILOR_HOME/keys/signing.key`` (``signing.pub`` beside it: give that to an agent as
``--trust-key`` to pin it explicitly), unless ``--signing-key FILE`` names another.

Rotation (``edgetailor keys rotate``, :func:`rotate_key`) moves the current key to
``previous/<key id>.key`` beside it and makes a new one. A device whose birth still reports a
previous key id is sent a :class:`shared.messages.RotateKeyCmd` signed with that previous key, and
every other command to it is signed with that key too until its birth reports the new one; a
previous key no known device pins any more is retired (deleted) by the command driver.

A running host notices a rotation made by another process (the file's change) and reloads.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from host.errors import ConfigError
from host.security import default_keys_dir
from shared.fsutil import atomic_write
from shared.signing import Signer, save_public_key

logger = logging.getLogger(__name__)

KEY_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"
PREVIOUS_DIR = "previous"


def default_key_path() -> Path:
    return default_keys_dir() / KEY_NAME


def _write_key(signer: Signer, path: Path, *, exclusive: bool = False) -> bool:
    """Write the key (0600 from the start: never readable by others) and its public half; with
    ``exclusive``, only if no key is there yet (False: another process made one first)."""
    from cryptography.hazmat.primitives import serialization

    pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        staged = path.with_name(f".{path.name}.{os.getpid()}.new")
        atomic_write(staged, pem, mode=0o600)
        try:
            os.link(staged, path)  # fails if a key appeared meanwhile: theirs is kept
        except FileExistsError:
            return False
        finally:
            staged.unlink(missing_ok=True)
    else:
        atomic_write(path, pem, mode=0o600)
    save_public_key(signer.private_key.public_key(), path.with_suffix(".pub"))
    return True


def make_key(path: Path) -> Signer:
    """A new host key at ``path`` (0600) with its public half beside it; ConfigError if one is
    there already."""
    signer = Signer.generate()
    if not _write_key(signer, Path(path), exclusive=True):
        raise ConfigError(f"{path} already exists; rotate it with `edgetailor keys rotate`")
    return signer


@dataclass(frozen=True)
class Rotation:
    path: Path
    key_id: str
    previous_key_id: str
    previous_path: Path


def rotate_key(path: Path | None = None) -> Rotation:
    """Make a new host key at ``path`` (default: the first-use key), keeping the current one in
    ``previous/`` to sign the rotation commands the devices that pin it are sent."""
    path = Path(path) if path is not None else default_key_path()
    if not path.is_file():
        raise ConfigError(
            f"no host key at {path} to rotate; it is made on the host's first use "
            "(or give --signing-key the key the host signs with)"
        )
    current = Signer.from_file(path)
    previous_dir = path.parent / PREVIOUS_DIR
    previous_dir.mkdir(parents=True, exist_ok=True)
    previous_path = previous_dir / f"{current.key_id}.key"
    _write_key(current, previous_path)
    fresh = Signer.generate()
    _write_key(fresh, path)
    logger.warning("host key rotated: %s -> %s", current.key_id, fresh.key_id)
    return Rotation(path, fresh.key_id, current.key_id, previous_path)


class HostKeys:
    """The key the host signs with, and the previous keys it still signs with for devices that
    pin one of them (thread-safe; reloads when the files change)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, make: bool = True) -> None:
        explicit = path is not None
        self.path = Path(path) if path is not None else default_key_path()
        self._lock = threading.Lock()
        self._stamp: tuple[float, ...] | None = None
        if not self.path.is_file():
            if explicit or not make:
                raise ConfigError(f"signing key {self.path} does not exist")
            signer = Signer.generate()
            if _write_key(signer, self.path, exclusive=True):
                logger.warning(
                    "made the host signing key %s at %s; agents pin it on the first command "
                    "they get (or give them %s as --trust-key)",
                    signer.key_id,
                    self.path,
                    self.path.with_suffix(".pub"),
                )
        self.current: Signer = Signer.from_file(self.path)
        self.previous: dict[str, Signer] = {}
        self.reload()

    @property
    def previous_dir(self) -> Path:
        return self.path.parent / PREVIOUS_DIR

    def _files_stamp(self) -> tuple[float, ...]:
        stamps = []
        for file in [self.path, *sorted(self.previous_dir.glob("*.key"))]:
            try:
                stamps.append(file.stat().st_mtime)
            except OSError:
                stamps.append(-1.0)
        return tuple(stamps)

    def reload(self) -> bool:
        """Read the keys again if their files changed (a rotation by another process)."""
        stamp = self._files_stamp()
        with self._lock:
            if stamp == self._stamp:
                return False
            self._stamp = stamp
        current = Signer.from_file(self.path)
        previous: dict[str, Signer] = {}
        for file in sorted(self.previous_dir.glob("*.key")):
            try:
                signer = Signer.from_file(file)
            except ConfigError as exc:
                logger.error("previous host key %s is unreadable: %s", file, exc)
                continue
            if signer.key_id != current.key_id:
                previous[signer.key_id] = signer
        with self._lock:
            changed = current.key_id != self.current.key_id or set(previous) != set(self.previous)
            self.current, self.previous = current, previous
        if changed:
            logger.info("host key %s (previous: %s)", current.key_id, ", ".join(previous) or "none")
        return True

    @property
    def key_id(self) -> str:
        return self.current.key_id

    def signer_for(self, pinned_key_id: str | None) -> Signer:
        """The key to sign with for a device that pins ``pinned_key_id`` (None: nothing yet)."""
        with self._lock:
            if pinned_key_id is not None and pinned_key_id in self.previous:
                return self.previous[pinned_key_id]
            return self.current

    def known(self, key_id: str | None) -> bool:
        with self._lock:
            return key_id == self.current.key_id or key_id in self.previous

    def retire(self, key_id: str) -> bool:
        """Delete a previous key no device pins any more."""
        with self._lock:
            if key_id not in self.previous:
                return False
            del self.previous[key_id]
        (self.previous_dir / f"{key_id}.key").unlink(missing_ok=True)
        (self.previous_dir / f"{key_id}.pub").unlink(missing_ok=True)
        with self._lock:
            self._stamp = None
        logger.warning("retired the previous host key %s: no known device pins it", key_id)
        return True


__all__ = ["HostKeys", "Rotation", "default_key_path", "make_key", "rotate_key"]
