"""The host's database: devices and artifacts (SQLite by default, PostgreSQL too); commands and
their results live in host.commands' tables, in the same database."""

from __future__ import annotations

from host.store.models import Base
from host.store.repository import DeviceInfo, Store, StoreError, default_db_url

__all__ = ["Base", "DeviceInfo", "Store", "StoreError", "default_db_url"]
