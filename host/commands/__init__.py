"""One recorded, signed command pipeline for every host-to-board command.

Every command (benchmark, deploy, rollback, cancel, ack, ping, rotate_key, and any later one) is
a row of the ``commands`` table (:mod:`host.commands.models`) before it goes anywhere. One
:class:`CommandDriver` per host process publishes the rows, each signed at that moment with the
host key the device pins, a fresh expiry and the device's next sequence number; it publishes them
again when their device comes back, after a restart, or when nothing was heard; it matches each
response to its row (command id, device, the device's pinned key), stores each final answer once
as the typed result the agent sent, and acknowledges it with a recorded, signed ack. Cancelling is
a row state; a command past its expiry ends as expired. The CLI without a service and
``edgetailor serve`` write the same rows and run the same driver (inside host.fleet.Fleet).

Modules: ``models`` (tables), ``kinds`` (the registry of command kinds: the extension point),
``repository`` (:class:`CommandStore`), ``driver`` (:class:`CommandDriver`), ``keys`` (the host's
signing keys and their rotation), ``grants`` (chunks only for commands), ``bench`` (benchmark a
model on a board: submit, poll, wait).
"""

from host.commands.driver import CommandDriver, CommandLink
from host.commands.grants import ChunkGate
from host.commands.keys import HostKeys, rotate_key
from host.commands.kinds import KINDS, CommandKind, Outcome, kind_of
from host.commands.models import (
    ANSWERED,
    CANCELLED,
    COMMAND_STATES,
    EXPIRED,
    FAILED,
    FINAL_STATES,
    OPEN_STATES,
    PENDING,
    PUBLISHED,
    RUNNING,
    SENT,
)
from host.commands.repository import CommandInfo, CommandStore, NewCommand

__all__ = [
    "ANSWERED",
    "CANCELLED",
    "COMMAND_STATES",
    "EXPIRED",
    "FAILED",
    "FINAL_STATES",
    "KINDS",
    "OPEN_STATES",
    "PENDING",
    "PUBLISHED",
    "RUNNING",
    "SENT",
    "ChunkGate",
    "CommandDriver",
    "CommandInfo",
    "CommandKind",
    "CommandLink",
    "CommandStore",
    "HostKeys",
    "NewCommand",
    "Outcome",
    "kind_of",
    "rotate_key",
]
