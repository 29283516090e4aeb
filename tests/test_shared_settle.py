"""A settlement booked on Postgres by two instances: one charge, one key movement.

An instance taken for dead has its holds settled ``recovered`` by a survivor; if it was
only slow, its own settlement of the same request arrives afterwards, perhaps with an
overrun. The ledger then keeps the first settlement whole and adds nothing of the
second: the entries of a request always sum to what its key was charged.
"""

from __future__ import annotations

import psycopg

from actors.ledger import ENTRY_COLUMNS
from actors.ledger_pg import PgLedger

HOLD = 100_000


def _key() -> dict:
    return {"name": "team", "key_hash": "h-team", "credit_micro": 1_000_000, "spent_micro": 0, "disabled": False,
            "models": None, "requests_per_minute": None, "max_concurrency": None, "created_at": 1.0,
            "revoked_at": None, "expires_at": None, "budget_period": None, "budget_limit_micro": None,
            "budget_start": None, "budget_spent_micro": 0, "requests_window_s": 60.0}


def _entry(kind: str, amount: int) -> dict:
    entry = {c: 0 for c in ENTRY_COLUMNS}
    entry.update({"request_id": "r1", "kind": kind, "key_name": "team", "provider": "sim", "model": "m",
                  "client_model": "m", "credential": None, "amount_micro": amount, "hold_micro": HOLD,
                  "provenance": "estimated", "reason": "recovered", "cost_source": "hold", "created_at": 2.0,
                  "basis": "", "unanswered": []})
    return entry


def _settle(*entries: dict) -> tuple[str, dict]:
    charged = sum(e["amount_micro"] for e in entries)
    return ("settle", {"request_id": "r1", "key_name": "team", "charged": charged, "budget_start": None,
                       "entries": list(entries)})


def test_a_late_settlement_with_an_overrun_after_a_recovery_adds_no_entry(pg_dsn):
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    try:
        ledger.apply([("put_key", _key()), ("hold", {"id": "r1", "key_name": "team", "provider": None, "model": "m",
                                                      "hold_micro": HOLD, "created_at": 1.5, "budget_start": None})])
        ledger.apply([_settle(_entry("charge", HOLD))])  # a survivor's recovery: the hold, charged
        ledger.apply([_settle(_entry("charge", HOLD), _entry("overrun", 40_000))])  # the slow instance's own
        entries = ledger.entries("r1")
    finally:
        ledger.close()
    with psycopg.connect(pg_dsn) as conn:
        spent, = conn.execute("SELECT spent_micro FROM keys WHERE name = 'team'").fetchone()
        open_holds, = conn.execute("SELECT COUNT(*) FROM reservations").fetchone()
    assert [e["kind"] for e in entries] == ["charge"]
    assert spent == sum(e["amount_micro"] for e in entries) == HOLD
    assert open_holds == 0


def test_an_overrun_settled_once_books_both_entries(pg_dsn):
    ledger = PgLedger(pg_dsn, "a")
    ledger.open()
    try:
        ledger.apply([("put_key", _key()), ("hold", {"id": "r1", "key_name": "team", "provider": None, "model": "m",
                                                      "hold_micro": HOLD, "created_at": 1.5, "budget_start": None})])
        ledger.apply([_settle(_entry("charge", HOLD), _entry("overrun", 40_000))])
        ledger.apply([_settle(_entry("charge", HOLD), _entry("overrun", 40_000))])  # retried: changes nothing
        entries = ledger.entries("r1")
    finally:
        ledger.close()
    with psycopg.connect(pg_dsn) as conn:
        spent, = conn.execute("SELECT spent_micro FROM keys WHERE name = 'team'").fetchone()
    assert sorted(e["kind"] for e in entries) == ["charge", "overrun"]
    assert spent == sum(e["amount_micro"] for e in entries) == HOLD + 40_000
