"""The one place the tests build a shared-backend config: an instance on a Postgres
and a Redis, both the session's private servers (``pg_dsn``, ``redis_url`` fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import base_config


def shared_config(tmp_path: Path, dsn: str, instance: str = "a", *, redis_url: str, **state: Any) -> dict:
    """``base_config`` for one instance (its own state_dir) on the Postgres at ``dsn``
    and the Redis at ``redis_url``."""
    doc = base_config(tmp_path / instance)
    doc["state"] = {"backend": "shared", "postgres": {"dsn": dsn}, "redis": {"url": redis_url, "timeout_s": 2.0},
                    "instance_id": instance, **state}
    return doc
