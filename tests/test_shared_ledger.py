"""The Postgres ledger's schema: created on a fresh database, left alone by a second
start, and a database migrated by a newer gateway refuses the start."""

from __future__ import annotations

import psycopg
import pytest

from actors.ledger import LedgerFault
from actors.ledger_pg import PgLedger
from actors.ledger_pg_schema import MIGRATIONS


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}


def _versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]


def test_a_fresh_database_gets_the_schema_and_a_second_start_changes_nothing(pg_dsn):
    ledger = PgLedger(pg_dsn, "a")
    first = ledger.open()
    ledger.close()
    assert (first.found, first.now, first.changed) == (0, len(MIGRATIONS), True)
    assert {"schema_version", "keys", "instances", "reservations", "entries"} <= _tables(pg_dsn)
    assert _versions(pg_dsn) == list(range(1, len(MIGRATIONS) + 1))

    again = PgLedger(pg_dsn, "b")
    second = again.open()
    again.close()
    assert (second.found, second.now, second.changed) == (len(MIGRATIONS), len(MIGRATIONS), False)
    assert _versions(pg_dsn) == list(range(1, len(MIGRATIONS) + 1))


def test_a_newer_schema_refuses_the_start_with_its_message(pg_dsn):
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    ledger.close()
    newer = len(MIGRATIONS) + 1
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (newer,))
    with pytest.raises(LedgerFault) as refused:
        PgLedger(pg_dsn, "a").open()
    message = str(refused.value)
    assert f"schema is version {newer}, newer than this gateway knows ({len(MIGRATIONS)})" in message
    assert "port=" not in message and "127.0.0.1" not in message  # never the DSN


def test_an_unreachable_postgres_is_a_write_error_without_the_dsn(pg_server):
    from actors.ledger import LedgerWriteError
    dsn = f"host=127.0.0.1 port=1 user=secretuser password=hunter2 dbname=nowhere"
    with pytest.raises(LedgerWriteError) as refused:
        PgLedger(dsn, "a", connect_timeout_s=1).open()
    text = str(refused.value) + repr(refused.value.__cause__) + repr(refused.value.__context__)
    assert "Postgres unreachable" in str(refused.value)
    assert "hunter2" not in text and "secretuser" not in text and "port=1" not in text
