"""The durable ledger: SQLite in WAL mode, written only by the usage actor's thread.

Every method here is synchronous and runs in a worker thread (``trio.to_thread``) so
the event loop never waits on disk -- but ``apply_now``, the same write for the event
loop's own thread when it need not wait at all. ``apply`` writes a whole batch of
operations in one transaction (group commit); the usage actor acknowledges none of
them before it returns. ``synchronous=NORMAL`` in WAL mode survives a killed process
(only an OS crash can lose the last transactions), and such a commit is a write to the
WAL in the page cache, no fsync: about a tenth of a millisecond, less than the thread
hand-off around it. The fsyncs are the checkpoint's, which is why the connection never
checkpoints on its own (``wal_autocheckpoint=0``) and ``checkpoint`` runs in a worker
thread.

Schema: ``keys`` (hashed gateway keys and their balances), ``reservations`` (open
holds; a row exists exactly while a request is in flight), ``entries`` (one row per
charge, and a separate ``overrun`` row when a charge exceeded its hold; unique by
request id and kind, which makes settling idempotent on disk too: a settlement whose
charge row is already there changes nothing, so a retried write never charges twice).

Opening checks the file before anything trusts it (``Ledger.open``): a zero-length file
where a ledger existed, a file SQLite cannot read, one that fails ``PRAGMA
quick_check``, or one that cannot be written refuses the start with ``LedgerFault``
naming the path and the fault -- never a silent new ledger. While serving, a lock held
by another process surfaces after a short busy timeout as ``LedgerWriteError``, which
the usage actor retries.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from actors.state_file import open_state_file

BUSY_TIMEOUT_MS = 100  # serving: a lock surfaces fast; the usage actor retries with backoff

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
    basis TEXT NOT NULL DEFAULT '',
    unanswered TEXT NOT NULL DEFAULT '[]',
    UNIQUE (request_id, kind)
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Columns added after the first schema: (name, declaration), added to older ledgers.
ADDED_ENTRY_COLUMNS = (
    ("basis", "TEXT NOT NULL DEFAULT ''"),
    ("unanswered", "TEXT NOT NULL DEFAULT '[]'"),
)

# Key columns added after the first schema: revocation, expiry, the periodic budget
# (its period and limit, and what was charged in the period starting at budget_start).
ADDED_KEY_COLUMNS = (
    ("revoked_at", "REAL"),
    ("expires_at", "INTEGER"),
    ("budget_period", "TEXT"),
    ("budget_limit_micro", "INTEGER"),
    ("budget_start", "INTEGER"),
    ("budget_spent_micro", "INTEGER NOT NULL DEFAULT 0"),
    ("requests_window_s", "REAL NOT NULL DEFAULT 60"),
)

ENTRY_COLUMNS = (
    "request_id", "kind", "key_name", "provider", "model", "client_model", "credential", "amount_micro",
    "hold_micro", "input", "cached_input", "cache_write", "output", "reasoning", "provenance", "reason",
    "cost_source", "created_at", "basis", "unanswered",
)


class LedgerFault(Exception):
    """The ledger cannot be trusted or written at start: the gateway must not serve."""

    def __init__(self, path: Path | str, fault: str) -> None:
        super().__init__(f"ledger {path}: {fault}; refusing to start (the ledger holds every key's balance: "
                         "repair or restore it, never delete it to get going)")
        self.path = path
        self.fault = fault


class LedgerWriteError(Exception):
    """A write the ledger refused for now (locked by another process, disk error):
    nothing of that transaction is on disk, and it may be tried again."""


def _is_fault(exc: BaseException) -> bool:
    """SQLite errors of the file or its locks, as opposed to a bug in a statement."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class Ledger:
    def __init__(self, state_dir: str | Path) -> None:
        self._lock = threading.Lock()
        self.path, self.db, existed = open_state_file(state_dir, "ledger.sqlite3", LedgerFault, "ledger")
        try:
            self._check(existed)
        except BaseException:
            self.db.close()
            raise
        self.db.execute("PRAGMA busy_timeout = 0")  # the event loop's writes never wait: ``_waiting``
        self.db.execute("PRAGMA wal_autocheckpoint = 0")  # ``checkpoint``, in a worker thread

    def _check(self, existed: bool) -> None:
        """Open, verify and prove writable, or raise ``LedgerFault`` saying which failed."""
        db = self.db
        try:
            if existed:
                result = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
                if result != ["ok"]:
                    raise LedgerFault(self.path, "fails its integrity check (PRAGMA quick_check: "
                                                 + "; ".join(map(str, result[:5])) + ")")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                have = {row[1] for row in db.execute("PRAGMA table_info(entries)").fetchall()}
                for name, declaration in ADDED_ENTRY_COLUMNS:
                    if name not in have:
                        db.execute(f"ALTER TABLE entries ADD COLUMN {name} {declaration}")
                have = {row[1] for row in db.execute("PRAGMA table_info(keys)").fetchall()}
                for name, declaration in ADDED_KEY_COLUMNS:
                    if name not in have:
                        db.execute(f"ALTER TABLE keys ADD COLUMN {name} {declaration}")
                # A real write proves the file, its directory and its lock are ours to use:
                # SQLite opens a write-protected file read-only without saying so.
                db.execute("INSERT INTO meta (name, value) VALUES ('opened_at', ?) "
                           "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (repr(time.time()),))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except LedgerFault:
            raise
        except sqlite3.Error as exc:
            message = str(exc)
            if "readonly" in message or "read-only" in message:
                raise LedgerFault(self.path, f"is read-only ({message})") from exc
            if "not a database" in message:
                raise LedgerFault(self.path, f"is not a readable SQLite ledger ({message})") from exc
            if "malformed" in message:
                raise LedgerFault(self.path, f"fails its integrity check ({message})") from exc
            raise LedgerFault(self.path, f"cannot be used ({message})") from exc

    @contextmanager
    def _waiting(self) -> Iterator[None]:
        """The lock, with SQLite's busy timeout on: a read or write in a worker thread waits
        up to ``BUSY_TIMEOUT_MS`` for another connection's lock on the file. Off again on
        the way out, so that the event loop's writes (``apply_now``) never wait and need
        no statement of their own to say so."""
        with self._lock:
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            try:
                yield
            finally:
                self.db.execute("PRAGMA busy_timeout = 0")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # ---------------------------------------------------------------- reads

    def load(self) -> tuple[list[dict], list[dict]]:
        """All keys and all open reservations, for (re)building the actor's core."""
        with self._waiting():
            cur = self.db.execute(
                "SELECT name, key_hash, credit_micro, spent_micro, disabled, models, requests_per_minute, "
                "max_concurrency, created_at, revoked_at, expires_at, budget_period, budget_limit_micro, "
                "budget_start, budget_spent_micro, requests_window_s FROM keys")
            keys = [
                {"name": n, "key_hash": h, "credit_micro": c, "spent_micro": s, "disabled": bool(d),
                 "models": json.loads(m) if m else None, "requests_per_minute": rpm, "max_concurrency": mc,
                 "created_at": t, "revoked_at": ra, "expires_at": ea, "budget_period": bp,
                 "budget_limit_micro": bl, "budget_start": bs, "budget_spent_micro": bsp, "requests_window_s": w}
                for n, h, c, s, d, m, rpm, mc, t, ra, ea, bp, bl, bs, bsp, w in cur.fetchall()
            ]
            cur = self.db.execute("SELECT id, key_name, provider, model, hold_micro, created_at FROM reservations")
            holds = [
                {"id": i, "key_name": k, "provider": p, "model": m, "hold_micro": h, "created_at": t}
                for i, k, p, m, h, t in cur.fetchall()
            ]
        return keys, holds

    def entries(self, request_id: str | None = None) -> list[dict]:
        with self._waiting():
            if request_id is None:
                cur = self.db.execute(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries ORDER BY seq")
            else:
                cur = self.db.execute(
                    f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries WHERE request_id = ? ORDER BY seq", (request_id,))
            rows = [dict(zip(ENTRY_COLUMNS, row)) for row in cur.fetchall()]
        for row in rows:
            row["unanswered"] = json.loads(row["unanswered"] or "[]")
        return rows

    def totals(self, since: float | None = None) -> dict:
        """Sums by key, provider, model and credential (optionally since a wall time)."""
        where, args = ("WHERE created_at >= ?", (since,)) if since is not None else ("", ())
        out = {}
        with self._waiting():
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

    def recent_requests(self, limit: int, key_name: str | None = None) -> list[dict]:
        """The last ``limit`` settled requests, newest first, one row each (a charge and
        its overrun summed): what the admin page lists before a request's own entries."""
        where, args = ("WHERE key_name = ?", (key_name,)) if key_name is not None else ("", ())
        with self._waiting():
            cur = self.db.execute(
                "SELECT request_id, MIN(created_at), key_name, MAX(client_model), MAX(provider), MAX(model), "
                "MAX(credential), SUM(amount_micro), SUM(input), SUM(cached_input), SUM(cache_write), SUM(output), "
                "SUM(reasoning), MAX(CASE WHEN kind='charge' THEN provenance END), "
                "MAX(CASE WHEN kind='charge' THEN reason END), COUNT(*), MAX(seq) AS last "
                f"FROM entries {where} GROUP BY request_id ORDER BY last DESC LIMIT ?", (*args, limit))
            rows = cur.fetchall()
        return request_rows(rows)

    def series(self, since: float, bucket_s: int) -> list[dict]:
        """Cost and tokens per time bucket (``bucket_s`` wide, aligned to the epoch), key
        and model, from ``since`` on, oldest first: the admin page's usage chart."""
        with self._waiting():
            cur = self.db.execute(
                "SELECT CAST(created_at / ? AS INTEGER) * ? AS bucket, key_name, model, "
                "COUNT(*) FILTER (WHERE kind='charge'), SUM(amount_micro), "
                "SUM(input + cached_input + cache_write), SUM(output + reasoning) "
                "FROM entries WHERE created_at >= ? GROUP BY bucket, key_name, model ORDER BY bucket, key_name, model",
                (bucket_s, bucket_s, since))
            rows = cur.fetchall()
        return [
            {"t": bucket, "key_name": key, "model": model, "requests": n, "cost_micro": cost or 0,
             "input_tokens": i or 0, "output_tokens": o or 0}
            for bucket, key, model, n, cost, i, o in rows
        ]

    # ---------------------------------------------------------------- writes

    def apply_now(self, ops: Iterable[tuple[str, Any]]) -> bool:
        """``apply`` on the caller's thread (the event loop's) when it need not wait: not
        for this object's lock (a checkpoint or a read in a worker holds it), not for
        another process's lock on the file (no busy timeout). False, having written
        nothing, when it would have to; the caller then writes with ``apply`` in a
        worker thread, which also says what a fault is."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            try:
                self.db.execute("BEGIN IMMEDIATE")  # the busy timeout is off outside ``_waiting``
            except sqlite3.Error:
                return False
            self._write_begun(ops)
        finally:
            self._lock.release()
        return True

    def checkpoint(self) -> None:
        """Copy the WAL's pages into the database file (PASSIVE: never waits for a
        reader or writer). Its fsyncs are why it runs in a worker thread."""
        with self._waiting():
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def apply(self, ops: Iterable[tuple[str, Any]]) -> None:
        """Write a batch of operations in one transaction, or none of it.

        A fault of the file or its lock raises ``LedgerWriteError`` (try again later);
        anything else is a bug and propagates as it is.
        """
        with self._waiting():
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if _is_fault(exc):
                    raise LedgerWriteError(str(exc)) from exc
                raise
            self._write_begun(ops)

    def _write_begun(self, ops: Iterable[tuple[str, Any]]) -> None:
        """The operations and the commit of a transaction just begun (the lock held);
        rolled back on any failure, a fault of the file raised as ``LedgerWriteError``."""
        db = self.db
        try:
            try:
                for op, arg in ops:
                    _OPS[op](db, arg)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_fault(exc):
                raise LedgerWriteError(str(exc)) from exc
            raise


def request_rows(rows: Iterable[tuple]) -> list[dict]:
    """``recent_requests``' rows (one per request, its entries summed) as dicts; the
    Postgres ledger's query gives the same columns."""
    return [
        {"request_id": rid, "created_at": at, "key_name": key, "client_model": client_model, "provider": provider,
         "model": model, "credential": credential, "amount_micro": amount or 0, "input": i or 0,
         "cached_input": ci or 0, "cache_write": cw or 0, "output": o or 0, "reasoning": r or 0,
         "provenance": provenance, "reason": reason, "entries": n}
        for rid, at, key, client_model, provider, model, credential, amount, i, ci, cw, o, r, provenance, reason,
        n, _ in rows
    ]


def _put_key(db: sqlite3.Connection, k: dict) -> None:
    db.execute(
        # spent_micro (and the budget's count) is written only when the key is new:
        # afterwards only settlements (and ``reset_budget``) move it, so a key update can
        # never overwrite a charge that is still being written.
        "INSERT INTO keys (name, key_hash, credit_micro, spent_micro, disabled, models, requests_per_minute, "
        "max_concurrency, created_at, revoked_at, expires_at, budget_period, budget_limit_micro, budget_start, "
        "budget_spent_micro, requests_window_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET requests_window_s=excluded.requests_window_s, "
        "key_hash=excluded.key_hash, credit_micro=excluded.credit_micro, "
        "disabled=excluded.disabled, models=excluded.models, requests_per_minute=excluded.requests_per_minute, "
        "max_concurrency=excluded.max_concurrency, revoked_at=excluded.revoked_at, expires_at=excluded.expires_at, "
        "budget_period=excluded.budget_period, budget_limit_micro=excluded.budget_limit_micro",
        (k["name"], k["key_hash"], k["credit_micro"], k["spent_micro"], int(k["disabled"]),
         json.dumps(k["models"]) if k["models"] is not None else None, k["requests_per_minute"],
         k["max_concurrency"], k["created_at"], k["revoked_at"], k["expires_at"], k["budget_period"],
         k["budget_limit_micro"], k["budget_start"], k["budget_spent_micro"], k["requests_window_s"]),
    )


def _reset_budget(db: sqlite3.Connection, r: dict) -> None:
    """A new budget (or period) on a key: its count starts again from zero."""
    db.execute("UPDATE keys SET budget_start = ?, budget_spent_micro = 0 WHERE name = ?",
               (r["budget_start"], r["name"]))


def _hold(db: sqlite3.Connection, h: dict) -> None:
    db.execute(
        "INSERT INTO reservations (id, key_name, provider, model, hold_micro, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (h["id"], h["key_name"], h["provider"], h["model"], h["hold_micro"], h["created_at"]),
    )


_INSERT_ENTRY = (f"INSERT OR IGNORE INTO entries ({', '.join(ENTRY_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})")
_ENTRY_ROW = operator.itemgetter(*ENTRY_COLUMNS)


def _settle(db: sqlite3.Connection, s: dict) -> None:
    """Book a settlement once: if its charge row exists (unique by request and kind),
    it was booked before and nothing changes."""
    db.execute("DELETE FROM reservations WHERE id = ?", (s["request_id"],))
    for n, entry in enumerate(s["entries"]):
        unanswered = entry.get("unanswered")
        row = {**entry, "unanswered": json.dumps(list(unanswered)) if unanswered else "[]",
               "basis": entry.get("basis", "")}
        cur = db.execute(_INSERT_ENTRY, _ENTRY_ROW(row))
        if n == 0 and cur.rowcount == 0:
            return
    db.execute("UPDATE keys SET spent_micro = spent_micro + ? WHERE name = ?", (s["charged"], s["key_name"]))
    start = s.get("budget_start")
    if start is not None:
        # The charge counts in its reservation's budget period. A period the ledger has
        # not seen yet (none of its charges written) starts here, at this charge; a
        # period's start is never moved back.
        db.execute(
            "UPDATE keys SET budget_spent_micro = CASE WHEN budget_start = ? THEN budget_spent_micro + ? ELSE ? END, "
            "budget_start = ? WHERE name = ? AND (budget_start IS NULL OR budget_start <= ?)",
            (start, s["charged"], s["charged"], start, s["key_name"], start))


_OPS = {"put_key": _put_key, "hold": _hold, "settle": _settle, "reset_budget": _reset_budget}
