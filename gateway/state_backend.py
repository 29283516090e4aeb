"""Which meter the gateway runs, by ``config.state.backend``: the one place that knows.

``local``: the usage actor over the SQLite ledger in ``state_dir``, the Responses store
in its SQLite file there. ``shared``: the shared meter over Postgres
(``actors/usage_shared.py``), with this instance's id (the config's, or one made at
start) and the rate windows the runtime hands it, and the Responses store in Postgres
(``actors/store_shared.py``). The rest of the gateway talks to either through the same
messages and attributes. The drivers (psycopg here, coredis in ``gateway/redis_state``)
are imported only when the shared backend runs: the local one never pays their memory.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Callable

import trio

from actors.durations import Durations
from actors.store import StoreActor, StoreLimits
from actors.usage import UsageActor
from actors.windows import Windows
from gateway.config import Config
from gateway.config_state import shared
from gateway.worker_link import Seat


def default_instance_id() -> str:
    """Host name, process id and a few random bytes: unique even for pid 1 in containers."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def instance_id_for(config: Config, seat: Seat | None = None) -> str:
    """This process's id among the instances; a worker of ``--workers N`` with a
    configured id gets its own from it (``Seat.instance_id``): each worker heartbeats
    and holds on its own."""
    if config.state.instance_id is None:
        return default_instance_id()  # the process id makes each worker's own
    return config.state.instance_id if seat is None else seat.instance_id(config.state.instance_id)


def meter_factory(current: Callable[[], Config], instance_id: str, windows: Windows,
                  commit_times: Durations) -> Callable[[], UsageActor]:
    """The usage actor's factory; it reads the current config each time it runs (an
    actor restarted after a reload gets the reloaded prices and keys)."""
    limiter = trio.CapacityLimiter(1)  # one ledger call at a time, across restarts
    first_start = [True]  # recovery of a previous process's holds runs once per process
    started = current()

    def local() -> UsageActor:
        cfg = current()
        return UsageActor(cfg.pricing, started.state_dir, cfg.keys, limiter, first_start, commit_times)

    def shared_meter() -> UsageActor:
        from actors.ledger_pg import PgLedger  # psycopg: loaded only by the shared backend
        from actors.pg_connection import statement_timeout_for
        from actors.usage_shared import SharedUsageActor

        cfg = current()
        state, postgres = started.state, started.state.postgres
        assert postgres is not None  # the config refuses a shared backend without it
        ledger = PgLedger(postgres.dsn.value, instance_id, postgres.connect_timeout_s,
                          statement_timeout_for(state.instance_ttl_s))
        return SharedUsageActor(cfg.pricing, ledger, cfg.keys, limiter, windows, first_start, state.heartbeat_s,
                                state.instance_ttl_s, commit_times)

    return shared_meter if shared(started.state) else local


def store_factory(config: Config, limits: StoreLimits, directory: str | None = None) -> Callable[[], StoreActor]:
    """The Responses store actor's factory (its settings are read at start only); the
    local store's file is in ``directory`` (this process's own, default ``state_dir``)."""
    limiter = trio.CapacityLimiter(1)  # the store's own worker thread, apart from the meter's
    postgres = config.state.postgres
    if shared(config.state) and postgres is not None:
        from actors.store_pg import PgResponseDB  # psycopg: loaded only by the shared backend
        from actors.store_shared import SharedStoreActor

        dsn, timeout = postgres.dsn.value, postgres.connect_timeout_s
        return lambda: SharedStoreActor(limits, PgResponseDB(dsn, timeout), limiter, config.store.sweep_interval_s)
    return lambda: StoreActor(limits, directory or config.state_dir, limiter, config.store.sweep_interval_s)
