"""The config section of where the gateway keeps its state (``Config.state``).

``local`` (the default): the in-process actors and the SQLite files under
``state_dir``; one process. ``shared``: money (keys, balances, reservations, the ledger,
instance heartbeats, stored responses) in Postgres, fast shared counters (rate windows,
concurrency leases, cooldowns and their notices) in Redis, so several workers and
instances serve one set of keys. Both connection strings are secrets (they may carry a
password): they are redacted everywhere and may be written as ``"env:NAME"``.
"""

from __future__ import annotations

from typing import Iterator, Literal
from urllib.parse import urlsplit

import attrs

from gateway.config_schema import POSITIVE, setting
from protocols.secret import Secret

BACKENDS = ("local", "shared")
Problems = Iterator[tuple[str, str]]


def _is_redis_url(value: str) -> bool:
    try:
        url = urlsplit(value)
        url.port
    except ValueError:
        return False
    return url.scheme in ("redis", "rediss", "unix") and bool(url.hostname or url.path)


@attrs.frozen(kw_only=True)
class PostgresConfig:
    """``dsn``: a libpq connection string or URI (``postgresql://user:pw@host:5432/db``)."""

    dsn: Secret
    connect_timeout_s: float = setting(5.0, check=POSITIVE)

    def problems(self, unread: frozenset[str]) -> Problems:
        text = self.dsn.value
        if "://" in text and urlsplit(text).scheme not in ("postgres", "postgresql"):
            yield "dsn", "expected a libpq connection string or a postgresql:// URI"


@attrs.frozen(kw_only=True)
class RedisConfig:
    """``url``: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS)."""

    url: Secret
    timeout_s: float = setting(0.5, check=POSITIVE)  # past it a call counts as Redis unreachable
    lease_ttl_s: float = setting(30.0, check=POSITIVE)  # a credential lease not renewed this long expires

    def problems(self, unread: frozenset[str]) -> Problems:
        if not _is_redis_url(self.url.value):
            yield "url", "expected a Redis URL: redis://host:6379/0 (rediss:// for TLS)"


@attrs.frozen(kw_only=True)
class StateConfig:
    backend: Literal[BACKENDS] = "local"
    postgres: PostgresConfig | None = None
    redis: RedisConfig | None = None
    instance_id: str | None = None  # null: made at start from host name and process id
    heartbeat_s: float = setting(2.0, check=POSITIVE)
    instance_ttl_s: float = setting(10.0, check=POSITIVE)  # a heartbeat older than this: the instance is gone

    def problems(self, unread: frozenset[str]) -> Problems:
        if self.backend == "shared":
            for name in ("postgres", "redis"):
                if getattr(self, name) is None:
                    yield name, f"the shared backend needs a {name} section"
        else:
            for name in ("postgres", "redis"):
                if getattr(self, name) is not None:
                    yield name, ("is set but the backend is 'local', which never uses it: set "
                                 "\"backend\": \"shared\" or remove it")
        if self.instance_ttl_s <= self.heartbeat_s * 2:
            yield "instance_ttl_s", "must be more than twice heartbeat_s (a late heartbeat is not a dead instance)"


def shared(state: StateConfig) -> bool:
    return state.backend == "shared"



