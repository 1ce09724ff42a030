"""The wire contract between the edgetailor host and its device agents.

Everything that crosses the broker is defined here: topic names (:mod:`shared.topics`), the versioned
message envelope and its bodies (:mod:`shared.messages`), the artifact manifest
(:mod:`shared.manifest`), chunk framing for artifact transfer (:mod:`shared.transfer`), hashing and
signing. This package imports neither torch nor FastAPI nor anything of ``host`` or ``device_agent``.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
