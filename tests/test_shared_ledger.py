"""The Postgres ledger: its schema (created on a fresh database, left alone by a second
start, refused when a newer gateway migrated it), settlements written once, and a
batch that waited for a key's lock reading what the lock's holder committed."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from actors.ledger import LedgerFault
from actors.ledger_pg import PgLedger
from actors.ledger_pg_schema import MIGRATIONS, migrate


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
    assert {"schema_version", "keys", "instances", "reservations", "entries", "responses"} <= _tables(pg_dsn)
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


def test_a_database_of_an_older_version_gains_only_the_later_migrations(pg_dsn):
    older = PgLedger(pg_dsn, "a")
    older.transaction(lambda tx: migrate(tx.rows, MIGRATIONS[:1]))
    older.close()
    assert _versions(pg_dsn) == [1] and "responses" not in _tables(pg_dsn)
    ledger = PgLedger(pg_dsn, "a")
    done = ledger.open()
    ledger.close()
    assert (done.found, done.now) == (1, len(MIGRATIONS))
    assert _versions(pg_dsn) == list(range(1, len(MIGRATIONS) + 1)) and "responses" in _tables(pg_dsn)


def _key_row(**overrides) -> dict:
    """A key as the core writes it (``put_key``): 1000 micro-dollars, no limits."""
    return {"name": "k", "key_hash": "h", "credit_micro": 1000, "spent_micro": 0, "disabled": False, "models": None,
            "requests_per_minute": None, "max_concurrency": None, "created_at": 0.0, "revoked_at": None,
            "expires_at": None, "budget_period": None, "budget_limit_micro": None, "budget_start": None,
            "budget_spent_micro": 0, "requests_window_s": 60.0, **overrides}


def test_a_settlement_written_twice_charges_once(pg_dsn):
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    key = _key_row(models=["m"], budget_period="day", budget_limit_micro=500, budget_start=86400)
    hold = {"id": "r1", "key_name": "k", "provider": None, "model": "m", "hold_micro": 40, "created_at": 1.0,
            "budget_start": 86400}
    entry = {"request_id": "r1", "key_name": "k", "provider": "p", "model": "m", "client_model": "m",
             "credential": None, "hold_micro": 40, "provenance": "reported", "reason": "complete",
             "cost_source": "pricing", "created_at": 2.0, "basis": "", "unanswered": [], "input": 1,
             "cached_input": 0, "cache_write": 0, "output": 2, "reasoning": 0}
    settle = ("settle", {"request_id": "r1", "key_name": "k", "charged": 55, "budget_start": 86400,
                         "entries": [{**entry, "kind": "charge", "amount_micro": 40},
                                     {**entry, "kind": "overrun", "amount_micro": 15}]})
    ledger.apply([("put_key", key), ("hold", hold)])
    ledger.apply([settle])
    ledger.apply([settle])  # a retried write
    keys, holds = ledger.load()
    assert holds == [] and [e["kind"] for e in ledger.entries("r1")] == ["charge", "overrun"]
    assert (keys[0]["spent_micro"], keys[0]["budget_spent_micro"], keys[0]["models"]) == (55, 55, ["m"])
    assert ledger.totals()["key_name"]["k"]["cost_micro"] == 55
    assert ledger.recent_requests(5)[0]["amount_micro"] == 55 and ledger.series(0, 60)[0]["cost_micro"] == 55
    ledger.close()


def _holds(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM reservations ORDER BY id")]


def test_a_batch_that_fails_part_way_writes_nothing_and_the_next_commits_alone(pg_dsn):
    """A batch whose decision fails after its first writes were queued (a bug, a
    statement Postgres refuses) leaves nothing behind, and the next batch on the same
    connection commits only its own writes, not the failed one's with them."""
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    ledger.apply([("put_key", _key_row())])

    def hold(request_id: str) -> tuple[str, dict]:
        return ("hold", {"id": request_id, "key_name": "k", "provider": None, "model": "m", "hold_micro": 10,
                         "created_at": 1.0})

    def failing(tx) -> None:
        tx.lock_keys(["k"], ())
        tx.write([hold("r1")])
        raise RuntimeError("the core failed mid-batch")

    with pytest.raises(RuntimeError):
        ledger.transaction(failing)
    assert _holds(pg_dsn) == []
    with pytest.raises(psycopg.errors.UndefinedTable):  # refused by the server after a queued write
        ledger.transaction(lambda tx: (tx.write([hold("r2")]), tx.rows("SELECT 1 FROM no_such_table")))
    assert _holds(pg_dsn) == []
    ledger.apply([hold("r3")])
    assert _holds(pg_dsn) == ["r3"]
    ledger.close()


def test_the_meters_reads_run_on_their_prepared_plans(pg_dsn):
    """A reserve's key lock and holds read are planned once, not at every execution
    (planning them each time was most of a reserve's time in the server)."""
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    ledger.apply([("put_key", _key_row())])
    for _ in range(12):  # past psycopg's threshold for preparing a statement (5)
        ledger.transaction(lambda tx: tx.lock_keys(["k"], ()))
    plans = ledger.transaction(lambda tx: tx.rows(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"))
    ledger.close()
    reads = [(generic, custom) for statement, generic, custom in plans
             if "FOR UPDATE OF k" in statement or "SUM(r.hold_micro)" in statement]
    assert len(reads) == 2 and all(generic >= 5 and custom == 0 for generic, custom in reads), plans


def _waiting_for_a_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return bool(conn.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted").fetchone()[0])


def test_a_batch_that_waited_for_a_key_sees_the_holds_committed_while_it_waited(pg_dsn):
    """Two instances reserve on one key at once: the second, having waited for the
    first's lock, must count the first's new hold, or both grant the same credit."""
    a, b = PgLedger(pg_dsn, "a"), PgLedger(pg_dsn, "b")
    a.open()
    b.open()
    a.apply([("put_key", _key_row())])
    locked, commit = threading.Event(), threading.Event()
    seen: list = []

    def first(tx) -> None:  # locks the key, writes a hold, and commits only when told
        tx.lock_keys(["k"], ())
        tx.write([("hold", {"id": "r1", "key_name": "k", "provider": None, "model": "m", "hold_micro": 700,
                            "created_at": 1.0})])
        locked.set()
        assert commit.wait(10)

    holder = threading.Thread(target=a.transaction, args=(first,))
    waiter = threading.Thread(target=lambda: seen.extend(b.transaction(lambda tx: tx.lock_keys(["k"], ()))))
    holder.start()
    try:
        assert locked.wait(10)
        waiter.start()
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(pg_dsn):  # the second batch's read has begun, and waits
            assert time.monotonic() < deadline, "the second batch never waited for the first's lock"
            time.sleep(0.005)
    finally:
        commit.set()
        holder.join(10)
    waiter.join(10)
    assert not holder.is_alive() and not waiter.is_alive()
    [row] = seen
    assert row["held"] == [(None, 700, 1)]  # the hold committed while it waited
    a.close()
    b.close()


@pytest.mark.parametrize("dsn, password", [
    ("host=db user=tollhouse password='a secret phrase' dbname=ledger", "a secret phrase"),
    (r"host=db password='it\'s me' dbname=ledger", "it's me"),
    ("host=db password=plain dbname=ledger", "plain"),
    ("postgresql://tollhouse:p%40ss%20word@db/ledger", "p@ss word"),
    ("postgresql://tollhouse@db/ledger?password=in-the-query", "in-the-query"),
])
def test_the_postgres_password_is_a_secret_however_the_dsn_writes_it(dsn, password):
    from gateway.config_state import PostgresConfig, StateConfig
    from protocols.secret import Secret
    from gateway.redaction import state_secrets
    from protocols.redact import Redactor

    secrets = state_secrets(StateConfig(backend="shared", postgres=PostgresConfig(dsn=Secret(dsn))))
    assert password in secrets
    line = f"connection to {password!s} failed"
    assert password not in Redactor(secrets).text(line)
