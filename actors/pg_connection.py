"""One synchronous psycopg connection, used from one worker thread at a time.

The shared backend's Postgres users (the ledger, the Responses store) each keep one,
opened lazily and replaced when it broke; every statement is bounded
(``statement_timeout_for``) (a lock wait included) and TCP keepalives notice a silent
peer. The DSN is kept here and never printed.
"""

from __future__ import annotations

import threading

import psycopg

STATEMENT_TIMEOUT_S = 10.0  # a statement (a lock wait included) past this is a refused write, not a hung meter


def statement_timeout_for(instance_ttl_s: float) -> float:
    """A statement's bound for an instance whose heartbeat expires after ``instance_ttl_s``:
    a third of it at most, so a batch that waits out its timeout (and rolls back the
    heartbeat it carried) leaves time for the next heartbeat before others take this
    instance for dead."""
    return min(STATEMENT_TIMEOUT_S, instance_ttl_s / 3)


class PgConnection:
    """The connection and the lock its users hold around each use."""

    SESSION_OPTIONS = ""  # more ``-c name=value`` settings for each connection this user opens

    def __init__(self, dsn: str, connect_timeout_s: float = 5.0, statement_timeout_s: float = STATEMENT_TIMEOUT_S) -> None:
        self._dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = max(1, int(statement_timeout_s * 1000))
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._drop()
            self._conn = psycopg.connect(self._dsn, autocommit=True,
                                         connect_timeout=max(1, int(self.connect_timeout_s + 0.999)),
                                         options=f"-c statement_timeout={self.statement_timeout_ms}"
                                                 f"{self.SESSION_OPTIONS}",
                                         keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass  # a broken connection may refuse even its close; it is dropped either way

    def close(self) -> None:
        with self._lock:
            self._drop()
