"""The shared ledger's schema in Postgres: an ordered list of forward-only migrations.

``schema_version`` holds one row per migration applied (its number and when). At start
the gateway applies, in one transaction and under an advisory lock (two instances
starting at once migrate once), every migration past the database's version; a
database whose version is newer than the last one this code knows refuses the start
(``SchemaTooNew``): an older gateway must not write a ledger it does not understand.
Migrations are never edited once released: a change is a new one at the end.

Tables: ``keys`` (hashed gateway keys, their credit, what they spent, their budget
period and its count), ``instances`` (every running gateway and its heartbeat, in
Postgres time), ``reservations`` (open holds, each with the instance that made it and
the budget period it counts in), ``entries`` (one row per charge and per overrun,
unique by request id and kind: settling is idempotent on disk), ``responses`` (the
stored Responses, as the SQLite store keeps them).
"""

from __future__ import annotations

from typing import Callable

import attrs

SCHEMA_LOCK = 0x746F6C6C  # advisory lock key ("toll"): migrations and key seeding, one instance at a time

MIGRATIONS: tuple[str, ...] = (
    # 1: the ledger, the instances and their reservations
    """
    CREATE TABLE keys (
        name TEXT PRIMARY KEY,
        key_hash TEXT UNIQUE NOT NULL,
        credit_micro BIGINT,
        spent_micro BIGINT NOT NULL DEFAULT 0,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        models TEXT,
        requests_per_minute BIGINT,
        max_concurrency BIGINT,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION,
        expires_at BIGINT,
        budget_period TEXT,
        budget_limit_micro BIGINT,
        budget_start BIGINT,
        budget_spent_micro BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        key_name TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        provider TEXT,
        model TEXT,
        hold_micro BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        budget_start BIGINT
    );
    CREATE INDEX reservations_by_key ON reservations (key_name);
    CREATE INDEX reservations_by_instance ON reservations (instance_id);
    CREATE TABLE entries (
        seq BIGSERIAL PRIMARY KEY,
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        key_name TEXT NOT NULL,
        provider TEXT,
        model TEXT,
        client_model TEXT,
        credential TEXT,
        amount_micro BIGINT NOT NULL,
        hold_micro BIGINT NOT NULL,
        input BIGINT NOT NULL DEFAULT 0,
        cached_input BIGINT NOT NULL DEFAULT 0,
        cache_write BIGINT NOT NULL DEFAULT 0,
        output BIGINT NOT NULL DEFAULT 0,
        reasoning BIGINT NOT NULL DEFAULT 0,
        provenance TEXT NOT NULL,
        reason TEXT NOT NULL,
        cost_source TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        basis TEXT NOT NULL DEFAULT '',
        unanswered TEXT NOT NULL DEFAULT '[]',
        UNIQUE (request_id, kind)
    );
    CREATE INDEX entries_by_time ON entries (created_at);
    CREATE INDEX entries_by_key ON entries (key_name, seq);
    """,
    # 2: stored Responses, so a conversation may move between instances
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        previous_id TEXT,
        model TEXT NOT NULL,
        provider TEXT,
        credential TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        size BIGINT NOT NULL,
        input TEXT NOT NULL,
        input_ids TEXT NOT NULL,
        response TEXT NOT NULL
    );
    CREATE INDEX responses_by_age ON responses (created_at);
    """,
    # 3: the window a key's requests_per_minute counts in
    """
    ALTER TABLE keys ADD COLUMN requests_window_s DOUBLE PRECISION NOT NULL DEFAULT 60
    """,
)


@attrs.frozen
class Migrated:
    """What a start found and did: the version it found, and the one it left."""

    found: int
    now: int

    @property
    def changed(self) -> bool:
        return self.found != self.now


class SchemaTooNew(Exception):
    """The database was migrated by a newer gateway than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"the Postgres ledger's schema is version {found}, newer than this gateway knows "
                         f"({known}): a newer gateway migrated it; run that version (or newer), never an older one")
        self.found = found
        self.known = known


def migrate(execute: Callable[..., list], migrations: tuple[str, ...] = MIGRATIONS) -> Migrated:
    """Bring the schema to the last of ``migrations`` inside the caller's transaction.

    ``execute(sql, params=None)`` runs one statement and returns its rows (empty for
    none). The caller holds the transaction and commits it: a migration that fails
    leaves the database as it was.
    """
    execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
    execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    found = execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")[0][0]
    if found > len(migrations):
        raise SchemaTooNew(found, len(migrations))
    for version in range(found + 1, len(migrations) + 1):
        for statement in migrations[version - 1].split(";"):
            if statement.strip():
                execute(statement)
        execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return Migrated(found, len(migrations))
