"""The durable ledger: SQLite in WAL mode, written only by the usage actor's thread.

Every method here is synchronous and runs in a worker thread (``trio.to_thread``) so
the event loop never waits on disk. ``apply`` writes a whole batch of operations in
one transaction (group commit); the usage actor acknowledges none of them before it
returns. ``synchronous=NORMAL`` in WAL mode survives a killed process (only an OS
crash can lose the last transactions).

Schema: ``keys`` (hashed gateway keys and their balances), ``reservations`` (open
holds; a row exists exactly while a request is in flight), ``entries`` (one row per
charge, and a separate ``overrun`` row when a charge exceeded its hold; unique by
request id and kind, which makes settling idempotent on disk too).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    key_hash TEXT UNIQUE NOT NULL,
    credit_micro INTEGER,
    spent_micro INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    models TEXT,
    requests_per_minute INTEGER,
    max_concurrency INTEGER,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    key_name TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    hold_micro INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    key_name TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    client_model TEXT,
    credential TEXT,
    amount_micro INTEGER NOT NULL,
    hold_micro INTEGER NOT NULL,
    input INTEGER NOT NULL DEFAULT 0,
    cached_input INTEGER NOT NULL DEFAULT 0,
    cache_write INTEGER NOT NULL DEFAULT 0,
    output INTEGER NOT NULL DEFAULT 0,
    reasoning INTEGER NOT NULL DEFAULT 0,
    provenance TEXT NOT NULL,
    reason TEXT NOT NULL,
    cost_source TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (request_id, kind)
);
"""

ENTRY_COLUMNS = (
    "request_id", "kind", "key_name", "provider", "model", "client_model", "credential", "amount_micro",
    "hold_micro", "input", "cached_input", "cache_write", "output", "reasoning", "provenance", "reason",
    "cost_source", "created_at",
)


class Ledger:
    def __init__(self, state_dir: str | Path) -> None:
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "ledger.sqlite3"
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ---------------------------------------------------------------- reads

    def load(self) -> tuple[list[dict], list[dict]]:
        """All keys and all open reservations, for (re)building the actor's core."""
        with self._lock:
            cur = self.db.execute(
                "SELECT name, key_hash, credit_micro, spent_micro, disabled, models, requests_per_minute, "
                "max_concurrency, created_at FROM keys")
            keys = [
                {"name": n, "key_hash": h, "credit_micro": c, "spent_micro": s, "disabled": bool(d),
                 "models": json.loads(m) if m else None, "requests_per_minute": rpm, "max_concurrency": mc,
                 "created_at": t}
                for n, h, c, s, d, m, rpm, mc, t in cur.fetchall()
            ]
            cur = self.db.execute("SELECT id, key_name, provider, model, hold_micro, created_at FROM reservations")
            holds = [
                {"id": i, "key_name": k, "provider": p, "model": m, "hold_micro": h, "created_at": t}
                for i, k, p, m, h, t in cur.fetchall()
            ]
        return keys, holds

    def entries(self, request_id: str | None = None) -> list[dict]:
        with self._lock:
            if request_id is None:
                cur = self.db.execute(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries ORDER BY seq")
            else:
                cur = self.db.execute(
                    f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries WHERE request_id = ? ORDER BY seq", (request_id,))
            return [dict(zip(ENTRY_COLUMNS, row)) for row in cur.fetchall()]

    def totals(self, since: float | None = None) -> dict:
        """Sums by key, provider, model and credential (optionally since a wall time)."""
        where, args = ("WHERE created_at >= ?", (since,)) if since is not None else ("", ())
        out = {}
        with self._lock:
            for dim in ("key_name", "provider", "model", "credential"):
                cur = self.db.execute(
                    f"SELECT {dim}, COUNT(*) FILTER (WHERE kind='charge'), SUM(amount_micro), SUM(input), "
                    f"SUM(cached_input), SUM(cache_write), SUM(output), SUM(reasoning) FROM entries {where} "
                    f"GROUP BY {dim}", args)
                out[dim] = {
                    str(k): {"requests": n, "cost_micro": c or 0, "input": i or 0, "cached_input": ci or 0,
                             "cache_write": cw or 0, "output": o or 0, "reasoning": r or 0}
                    for k, n, c, i, ci, cw, o, r in cur.fetchall()
                }
        return out

    # ---------------------------------------------------------------- writes

    def apply(self, ops: Iterable[tuple[str, Any]]) -> None:
        """Write a batch of operations in one transaction."""
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                for op, arg in ops:
                    _OPS[op](db, arg)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


def _put_key(db: sqlite3.Connection, k: dict) -> None:
    db.execute(
        "INSERT INTO keys (name, key_hash, credit_micro, spent_micro, disabled, models, requests_per_minute, "
        "max_concurrency, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "key_hash=excluded.key_hash, credit_micro=excluded.credit_micro, spent_micro=excluded.spent_micro, "
        "disabled=excluded.disabled, models=excluded.models, requests_per_minute=excluded.requests_per_minute, "
        "max_concurrency=excluded.max_concurrency",
        (k["name"], k["key_hash"], k["credit_micro"], k["spent_micro"], int(k["disabled"]),
         json.dumps(k["models"]) if k["models"] is not None else None, k["requests_per_minute"],
         k["max_concurrency"], k["created_at"]),
    )


def _hold(db: sqlite3.Connection, h: dict) -> None:
    db.execute(
        "INSERT INTO reservations (id, key_name, provider, model, hold_micro, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (h["id"], h["key_name"], h["provider"], h["model"], h["hold_micro"], h["created_at"]),
    )


def _settle(db: sqlite3.Connection, s: dict) -> None:
    db.execute("DELETE FROM reservations WHERE id = ?", (s["request_id"],))
    for entry in s["entries"]:
        db.execute(
            f"INSERT OR IGNORE INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})",
            tuple(entry[c] for c in ENTRY_COLUMNS),
        )
    db.execute("UPDATE keys SET spent_micro = spent_micro + ? WHERE name = ?", (s["charged"], s["key_name"]))


_OPS = {"put_key": _put_key, "hold": _hold, "settle": _settle}
