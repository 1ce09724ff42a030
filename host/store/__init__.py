"""The host's database: devices, artifacts, jobs and results (SQLite by default, PostgreSQL too)."""

from __future__ import annotations

from host.store.models import Base
from host.store.repository import (
    DeviceInfo,
    JobInfo,
    ResultInfo,
    Store,
    StoreError,
    default_db_url,
)

__all__ = ["Base", "DeviceInfo", "JobInfo", "ResultInfo", "Store", "StoreError", "default_db_url"]
