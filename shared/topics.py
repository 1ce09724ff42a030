"""The only place that builds or parses MQTT topic strings.

Layout (``{root}`` is ``{base}/v1``)::

    {root}/dev/{id}/status        dev->host  retained  "online" / "offline" (offline is the Last Will)
    {root}/dev/{id}/birth         dev->host  retained  capabilities (messages.Birth)
    {root}/dev/{id}/telemetry     dev->host            messages.Telemetry
    {root}/dev/{id}/cmd/{name}    host->dev            commands
    {root}/dev/{id}/resp/{name}   dev->host            responses echoing the command's msg_id as corr_id
    {root}/dev/{id}/xfer/req      dev->host            chunk requests (messages.ChunkRequest)
    {root}/art/{sha256}           host->devs           chunks of one artifact (transfer framing), shared by
                                                       every device fetching it so the broker fans out
    {root}/host/status            host->all  retained  "online" / "offline"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared import PROTOCOL_VERSION
from shared.errors import ConfigError, ValidationError
from shared.hashing import is_sha256_hex

DEFAULT_BASE = "edgetailor"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SHARE_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe inside a topic and a file name, else raise."""
    if not isinstance(device_id, str) or not DEVICE_ID.match(device_id):
        raise ConfigError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '_', '.', '-', starting "
            "with a letter or digit"
        )
    return device_id


@dataclass(frozen=True)
class ParsedTopic:
    kind: str  # status | birth | telemetry | cmd | resp | xfer_req | art | host_status
    device_id: str | None = None
    name: str | None = None
    sha256: str | None = None


class Topics:
    """Topic builders for one base topic."""

    def __init__(self, base: str = DEFAULT_BASE) -> None:
        if not base or any(c in base for c in "+#") or base.startswith("/") or base.endswith("/"):
            raise ConfigError(f"invalid base topic {base!r}: no wildcards, no leading/trailing '/'")
        self.base = base
        self.root = f"{base}/v{PROTOCOL_VERSION}"

    # -- device topics -------------------------------------------------------------------------
    def device(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}"

    def status(self, device_id: str) -> str:
        return f"{self.device(device_id)}/status"

    def birth(self, device_id: str) -> str:
        return f"{self.device(device_id)}/birth"

    def telemetry(self, device_id: str) -> str:
        return f"{self.device(device_id)}/telemetry"

    def cmd(self, device_id: str, name: str) -> str:
        return f"{self.device(device_id)}/cmd/{_check_name(name)}"

    def resp(self, device_id: str, name: str) -> str:
        return f"{self.device(device_id)}/resp/{_check_name(name)}"

    def xfer_request(self, device_id: str) -> str:
        return f"{self.device(device_id)}/xfer/req"

    def artifact_chunks(self, sha256: str) -> str:
        if not is_sha256_hex(sha256):
            raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
        return f"{self.root}/art/{sha256}"

    def host_status(self) -> str:
        return f"{self.root}/host/status"

    # -- subscriptions -------------------------------------------------------------------------
    def device_subscriptions(self, device_id: str) -> list[str]:
        """What an agent subscribes to (artifact topics are added per transfer)."""
        return [f"{self.device(device_id)}/cmd/+", self.host_status()]

    def host_subscriptions(self, share_group: str | None = None) -> list[str]:
        """What a host subscribes to.

        With ``share_group`` the responses and chunk requests are MQTT shared subscriptions
        (``$share/{group}/...``): the broker hands each message to one host of the group, so
        replicas on one database store each result once. Status, birth and telemetry stay plain
        subscriptions: every replica keeps the whole device registry and can serve the API.
        """
        dev = f"{self.root}/dev/+"
        shared = f"$share/{check_share_group(share_group)}/" if share_group else ""
        return [
            f"{dev}/status",
            f"{dev}/birth",
            f"{dev}/telemetry",
            f"{shared}{dev}/resp/+",
            f"{shared}{dev}/xfer/req",
        ]

    # -- parsing -------------------------------------------------------------------------------
    def parse(self, topic: str) -> ParsedTopic:
        """Classify a topic string; raises ValidationError for anything outside the contract."""
        prefix = self.root + "/"
        if not topic.startswith(prefix):
            raise ValidationError(f"topic {topic!r} is outside {self.root}")
        parts = topic[len(prefix) :].split("/")
        if parts == ["host", "status"]:
            return ParsedTopic("host_status")
        if len(parts) == 2 and parts[0] == "art" and is_sha256_hex(parts[1]):
            return ParsedTopic("art", sha256=parts[1])
        if len(parts) >= 3 and parts[0] == "dev" and DEVICE_ID.match(parts[1]):
            device_id, rest = parts[1], parts[2:]
            if len(rest) == 1 and rest[0] in ("status", "birth", "telemetry"):
                return ParsedTopic(rest[0], device_id=device_id)
            if len(rest) == 2 and rest[0] in ("cmd", "resp") and NAME.match(rest[1]):
                return ParsedTopic(rest[0], device_id=device_id, name=rest[1])
            if rest == ["xfer", "req"]:
                return ParsedTopic("xfer_req", device_id=device_id)
        raise ValidationError(f"topic {topic!r} is not part of the edgetailor contract")


def check_share_group(group: str) -> str:
    """Return ``group`` if it can name an MQTT shared subscription group, else raise."""
    if not isinstance(group, str) or not SHARE_GROUP.match(group):
        raise ConfigError(
            f"invalid shared subscription group {group!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    return group


def _check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValidationError(f"invalid command name {name!r}")
    return name
