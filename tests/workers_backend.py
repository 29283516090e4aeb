"""The ``state`` section the worker tests run with: the shared backend on the session's
private Postgres (a fresh database per test) and Redis (``tests.pg_server``,
``tests.redis_server``)."""

from __future__ import annotations

import pytest


@pytest.fixture
def shared_state(pg_dsn: str, redis_url: str) -> dict:
    return {"backend": "shared", "postgres": {"dsn": pg_dsn}, "redis": {"url": redis_url, "timeout_s": 2.0},
            "instance_id": "gw"}
