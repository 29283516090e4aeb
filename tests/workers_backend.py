"""The ``state`` section the worker tests run with: the shared backend."""

from __future__ import annotations

import pytest


@pytest.fixture
def shared_state() -> dict:
    """A shared-backend section whose servers nothing in these tests reaches."""
    return {"backend": "shared", "postgres": {"dsn": "postgresql://tollhouse@127.0.0.1:1/tollhouse"},
            "redis": {"url": "redis://127.0.0.1:1/0"}}
