"""edgetailor device agent: runs on the board; imports shared/ only (plus paho-mqtt, psutil)."""

from __future__ import annotations

AGENT_VERSION = "0.1.0"
