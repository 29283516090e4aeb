"""The one place the tests build a shared-backend config: an instance on a Postgres.

The shared backend needs a Redis section too; until a test Redis is started here, a
placeholder URL stands in (the meter's money path never depends on Redis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import base_config

REDIS_URL = "redis://127.0.0.1:6379/0"  # placeholder: nothing here connects to it yet


def shared_config(tmp_path: Path, dsn: str, instance: str = "a", **state: Any) -> dict:
    """``base_config`` for one instance (its own state_dir) on the Postgres at ``dsn``."""
    doc = base_config(tmp_path / instance)
    doc["state"] = {"backend": "shared", "postgres": {"dsn": dsn}, "redis": {"url": REDIS_URL},
                    "instance_id": instance, **state}
    return doc
