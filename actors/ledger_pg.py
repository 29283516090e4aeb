"""The shared ledger: Postgres, written only by the usage actor's worker thread.

The same surface as the SQLite ledger (``actors/ledger.py``) for the meter and the
admin reads -- ``apply`` a batch of the core's operations in one transaction, ``load``,
``entries``, ``totals``, ``recent_requests``, ``series`` -- plus ``transaction(fn)``:
``fn`` gets a ``PgTransaction`` in which the shared meter locks the keys a batch
touches, reads their state as every instance left it, and writes the batch's
operations, all committed together (or none of it).

One psycopg connection (synchronous: no async Postgres driver runs under trio as is),
used from one worker thread at a time (the actor's limiter, and a lock here for the
admin reads). A connection that breaks is dropped and made again on the next call.
Every fault of the server or the network surfaces as ``LedgerWriteError`` with a
message that never holds the connection string: psycopg's own messages may quote the
host, the user or the database, so only the error's kind and SQLSTATE are kept.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, TypeVar

import psycopg
from psycopg import errors as pg_errors

from actors.ledger import ENTRY_COLUMNS, LedgerFault, LedgerWriteError, request_rows
from actors.pg_connection import STATEMENT_TIMEOUT_S, PgConnection
from actors.ledger_pg_schema import SCHEMA_LOCK, Migrated, SchemaTooNew, migrate

T = TypeVar("T")
WHAT = "postgres"  # how logs and faults name this ledger: never its connection string

KEY_COLUMNS = ("name", "key_hash", "credit_micro", "spent_micro", "disabled", "models", "requests_per_minute",
               "max_concurrency", "created_at", "revoked_at", "expires_at", "budget_period", "budget_limit_micro",
               "budget_start", "budget_spent_micro", "requests_window_s")
HOLD_COLUMNS = ("id", "key_name", "provider", "model", "hold_micro", "created_at", "instance_id", "budget_start")


def describe(exc: BaseException) -> str:
    """A psycopg error as it may be shown: its kind and SQLSTATE, never its text."""
    state = getattr(exc, "sqlstate", None)
    kind = type(exc).__name__
    if isinstance(exc, psycopg.OperationalError) and state is None:
        return f"Postgres unreachable ({kind})"
    return f"Postgres refused ({kind}{', SQLSTATE ' + state if state else ''})"


def _by_key(rows: Iterable) -> dict[str, list[tuple[int | None, int, int]]]:
    """(key, budget period start, held, count) rows, grouped by key."""
    out: dict[str, list] = {}
    for name, start, held, count in rows:
        out.setdefault(name, []).append((start, held, count))
    return out


def _roll_back(conn: psycopg.Connection) -> None:
    """End a transaction that failed part-way: a statement refused inside an explicit
    BEGIN leaves the block open (and aborted) until a ROLLBACK, which the connection's
    next user must not inherit. A connection too broken to take it is dropped by the caller."""
    if conn.closed or conn.broken or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()  # unusable: the next call connects afresh


def _key(row: tuple) -> dict:
    key = dict(zip(KEY_COLUMNS, row))
    key["models"] = json.loads(key["models"]) if key["models"] else None
    return key


class PgTransaction:
    """One open transaction of the shared meter (see ``PgLedger.transaction``), in
    psycopg's pipeline mode: ``send`` queues a statement whose result nothing reads (a
    write), ``rows`` sends what is queued with its own statement and waits for the
    answer. So a batch's BEGIN, register and lock travel in one round trip, and its
    writes with the COMMIT in one (a batch of settlements alone, which reads nothing,
    in one in all); Postgres still runs them one after another, each read with its own
    snapshot. A queued write that fails fails the transaction at its next round trip,
    as it would have failed it at once."""

    def __init__(self, conn: psycopg.Connection, instance_id: str, pipeline: psycopg.Pipeline) -> None:
        self.conn = conn
        self.instance_id = instance_id
        self.pipeline = pipeline

    def send(self, sql: str, params: Any = None) -> None:
        self.conn.execute(sql, params)

    def rows(self, sql: str, params: Any = None) -> list:
        cur = self.conn.execute(sql, params)
        self.pipeline.sync()
        return cur.fetchall() if cur.description is not None else []

    # -- instances

    def register(self) -> None:
        """This instance is alive now (Postgres time); a row a sweep removed comes back."""
        self.send("INSERT INTO instances (id) VALUES (%s) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
                  (self.instance_id,))

    def heartbeat(self) -> bool:
        """Refresh this instance's heartbeat; False if its row was gone (taken for dead)."""
        found = self.rows("UPDATE instances SET heartbeat_at = now() WHERE id = %s RETURNING id", (self.instance_id,))
        if not found:
            self.register()
        return bool(found)

    def live_age(self) -> float | None:
        """Seconds since this instance id's last heartbeat, if a row holds it."""
        found = self.rows("SELECT EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 FROM instances WHERE id = %s",
                          (self.instance_id,))
        return found[0][0] if found else None

    def claim_expired(self, ttl_s: float) -> list[str]:
        """Remove every other instance whose heartbeat is older than ``ttl_s``: each is
        claimed by exactly one survivor (the row's delete), in this transaction."""
        found = self.rows("DELETE FROM instances WHERE id <> %s AND heartbeat_at < now() - make_interval(secs => %s) "
                          "RETURNING id", (self.instance_id, ttl_s))
        return sorted(row[0] for row in found)

    def orphan_holds(self) -> list[dict]:
        """Open reservations whose instance has no row (claimed in this transaction, or
        gone without settling), locked: one survivor settles each."""
        found = self.rows(
            f"SELECT {', '.join('r.' + c for c in HOLD_COLUMNS)} FROM reservations r WHERE NOT EXISTS "
            "(SELECT 1 FROM instances i WHERE i.id = r.instance_id) ORDER BY r.id FOR UPDATE OF r SKIP LOCKED")
        return [dict(zip(HOLD_COLUMNS, row)) for row in found]

    def remove_instance(self) -> int:
        """A graceful stop: this instance's row goes; returns its reservations still open."""
        self.rows("DELETE FROM instances WHERE id = %s", (self.instance_id,))
        return self.rows("SELECT COUNT(*) FROM reservations WHERE instance_id = %s", (self.instance_id,))[0][0]

    def open_holds(self, limit: int) -> list[dict]:
        """Every instance's open reservations, oldest first (at most ``limit``)."""
        found = self.rows(f"SELECT {', '.join(HOLD_COLUMNS)} FROM reservations ORDER BY created_at, id LIMIT %s",
                          (limit,))
        return [dict(zip(HOLD_COLUMNS, row)) for row in found]

    def own_holds(self) -> list[dict]:
        found = self.rows(f"SELECT {', '.join(HOLD_COLUMNS)} FROM reservations WHERE instance_id = %s ORDER BY id",
                          (self.instance_id,))
        return [dict(zip(HOLD_COLUMNS, row)) for row in found]

    # -- keys

    def lock_keys(self, names: Iterable[str], hashes: Iterable[str]) -> list[dict]:
        """The named keys and the keys of these hashes, locked in name order (two
        batches lock shared keys in one order: no deadlock), each with ``held``: its
        open reservations on every instance (see ``held``).

        Two statements, not one: under read committed a statement that waited for a
        row lock re-reads the locked row at its newest version but everything else at
        the snapshot it started with, so a subquery of the locking statement would miss
        the reservations the lock's previous holder has just committed -- and grant the
        same credit twice. The read after the lock sees every commit before it."""
        names, hashes = sorted(set(names)), sorted(set(hashes))
        if not names and not hashes:
            return []
        locking = self.conn.execute(
            f"SELECT {', '.join('k.' + c for c in KEY_COLUMNS)} FROM keys k "
            "WHERE k.name = ANY(%s) OR k.key_hash = ANY(%s) ORDER BY k.name FOR UPDATE OF k", (names, hashes))
        holding = self.conn.execute(  # runs once the lock is taken: its snapshot has the holder's commit
            "SELECT r.key_name, r.budget_start, SUM(r.hold_micro)::bigint, COUNT(*) FROM reservations r "
            "JOIN keys k ON k.name = r.key_name WHERE k.name = ANY(%s) OR k.key_hash = ANY(%s) "
            "GROUP BY r.key_name, r.budget_start", (names, hashes))
        self.pipeline.sync()
        found = [_key(row) for row in locking.fetchall()]
        held = _by_key(holding.fetchall())
        for key in found:
            key["held"] = held.get(key["name"], [])
        return found

    def all_keys(self, lock: bool = False) -> list[dict]:
        found = self.rows(f"SELECT {', '.join(KEY_COLUMNS)} FROM keys ORDER BY name{' FOR UPDATE' if lock else ''}")
        return [_key(row) for row in found]

    def held(self, names: Iterable[str]) -> dict[str, list[tuple[int | None, int, int]]]:
        """Per key: (budget period start, held, count) of its open reservations on every instance."""
        names = sorted(set(names))
        if not names:
            return {}
        return _by_key(self.rows(
            "SELECT key_name, budget_start, SUM(hold_micro)::bigint, COUNT(*) FROM reservations "
            "WHERE key_name = ANY(%s) GROUP BY key_name, budget_start", (names,)))

    def seed_lock(self) -> None:
        """Serialise key seeding across instances starting at once."""
        self.rows("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))

    # -- writes

    def write(self, ops: Iterable[tuple[str, Any]]) -> None:
        for op, arg in ops:
            _OPS[op](self, arg)


class PgLedger(PgConnection):
    """The meter's statements (a key by name or hash, the holds of a few keys, one
    reservation) run on their prepared plans: left to itself Postgres plans two of them
    afresh at every execution (a custom plan: ~0.2 ms each, most of a reserve's time in
    the server). The admin reads, whose best plan depends on their bounds (entries
    since a time), are given the planner's own choice back (``transaction``)."""

    path = WHAT  # what the meter's logs name
    SESSION_OPTIONS = " -c plan_cache_mode=force_generic_plan"

    def __init__(self, dsn: str, instance_id: str, connect_timeout_s: float = 5.0,
                 statement_timeout_s: float = STATEMENT_TIMEOUT_S) -> None:
        super().__init__(dsn, connect_timeout_s, statement_timeout_s)
        self.instance_id = instance_id
        self.migrated: Migrated | None = None

    def __repr__(self) -> str:
        return f"PgLedger(instance_id={self.instance_id!r})"  # never the DSN

    def open(self) -> Migrated:
        """Connect and migrate. ``LedgerWriteError``: unreachable (try again later);
        ``LedgerFault``: this database must not be used by this gateway."""
        try:
            self.migrated = self.transaction(lambda tx: migrate(tx.rows))
        except SchemaTooNew as exc:
            self.close()
            raise LedgerFault(WHAT, str(exc)) from None
        return self.migrated

    def transaction(self, fn: Callable[[PgTransaction], T], generic_plans: bool = True) -> T:
        """Run ``fn`` in one transaction, committed when it returns; a fault of the
        server or the network raises ``LedgerWriteError`` (nothing of it committed).
        ``generic_plans`` False: the planner chooses as it would by default (the admin
        reads; see the class)."""
        with self._lock:
            try:
                conn = self._connection()
                try:
                    with conn.pipeline() as pipeline:
                        # BEGIN and COMMIT queued with the statements around them (the
                        # connection is in autocommit): psycopg's own transaction() syncs
                        # after its BEGIN and again around its COMMIT, two more round trips
                        conn.execute("BEGIN")
                        if not generic_plans:
                            conn.execute("SET LOCAL plan_cache_mode = auto")
                        result = fn(PgTransaction(conn, self.instance_id, pipeline))
                        conn.execute("COMMIT")
                except BaseException:
                    _roll_back(conn)
                    raise
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError, pg_errors.SerializationFailure,
                    pg_errors.DeadlockDetected, pg_errors.AdminShutdown, psycopg.IntegrityError) as exc:
                # IntegrityError: another instance wrote the same key name or secret in the
                # same instant; nothing of this batch is written, and the next one reads it
                self._drop()
                raise LedgerWriteError(describe(exc)) from None

    def apply(self, ops: Iterable[tuple[str, Any]]) -> None:
        """Write a batch of operations in one transaction, or none of it."""
        ops = list(ops)
        self.transaction(lambda tx: tx.write(ops))

    # ---------------------------------------------------------------- reads

    def _read(self, sql: str, params: Any = None) -> list:
        return self.transaction(lambda tx: tx.rows(sql, params), generic_plans=False)

    def load(self) -> tuple[list[dict], list[dict]]:
        """All keys and this instance's open reservations."""
        return self.transaction(lambda tx: (tx.all_keys(), tx.own_holds()))

    def entries(self, request_id: str | None = None) -> list[dict]:
        where, args = ("WHERE request_id = %s", (request_id,)) if request_id is not None else ("", ())
        rows = [dict(zip(ENTRY_COLUMNS, row))
                for row in self._read(f"SELECT {', '.join(ENTRY_COLUMNS)} FROM entries {where} ORDER BY seq", args)]
        for row in rows:
            row["unanswered"] = json.loads(row["unanswered"] or "[]")
        return rows

    def totals(self, since: float | None = None) -> dict:
        """Sums by key, provider, model and credential (optionally since a wall time)."""
        where, args = ("WHERE created_at >= %s", (since,)) if since is not None else ("", ())
        out = {}
        for dim in ("key_name", "provider", "model", "credential"):
            rows = self._read(
                f"SELECT {dim}, COUNT(*) FILTER (WHERE kind='charge'), SUM(amount_micro)::bigint, SUM(input)::bigint, "
                f"SUM(cached_input)::bigint, SUM(cache_write)::bigint, SUM(output)::bigint, SUM(reasoning)::bigint "
                f"FROM entries {where} GROUP BY {dim}", args)
            out[dim] = {
                str(k): {"requests": n, "cost_micro": c or 0, "input": i or 0, "cached_input": ci or 0,
                         "cache_write": cw or 0, "output": o or 0, "reasoning": r or 0}
                for k, n, c, i, ci, cw, o, r in rows
            }
        return out

    def recent_requests(self, limit: int, key_name: str | None = None) -> list[dict]:
        """The last ``limit`` settled requests, newest first, one row each."""
        where, args = ("WHERE key_name = %s", (key_name,)) if key_name is not None else ("", ())
        rows = self._read(
            "SELECT request_id, MIN(created_at), MIN(key_name), MAX(client_model), MAX(provider), MAX(model), "
            "MAX(credential), SUM(amount_micro)::bigint, SUM(input)::bigint, SUM(cached_input)::bigint, "
            "SUM(cache_write)::bigint, SUM(output)::bigint, SUM(reasoning)::bigint, "
            "MAX(CASE WHEN kind='charge' THEN provenance END), MAX(CASE WHEN kind='charge' THEN reason END), "
            f"COUNT(*), MAX(seq) AS last FROM entries {where} GROUP BY request_id ORDER BY last DESC LIMIT %s",
            (*args, limit))
        return request_rows(rows)

    def series(self, since: float, bucket_s: int) -> list[dict]:
        """Cost and tokens per time bucket, key and model, from ``since`` on, oldest first."""
        rows = self._read(
            "SELECT (trunc(created_at / %s) * %s)::bigint AS bucket, key_name, model, "
            "COUNT(*) FILTER (WHERE kind='charge'), SUM(amount_micro)::bigint, "
            "SUM(input + cached_input + cache_write)::bigint, SUM(output + reasoning)::bigint "
            "FROM entries WHERE created_at >= %s GROUP BY bucket, key_name, model ORDER BY bucket, key_name, model",
            (bucket_s, bucket_s, since))
        return [
            {"t": bucket, "key_name": key, "model": model, "requests": n, "cost_micro": cost or 0,
             "input_tokens": i or 0, "output_tokens": o or 0}
            for bucket, key, model, n, cost, i, o in rows
        ]


# ---------------------------------------------------------------- the core's operations


def _put_key(tx: PgTransaction, k: dict) -> None:
    # spent_micro and the budget's count are written only when the key is new:
    # afterwards only settlements (and ``reset_budget``) move them.
    tx.send(
        f"INSERT INTO keys ({', '.join(KEY_COLUMNS)}) VALUES ({', '.join(['%s'] * len(KEY_COLUMNS))}) "
        "ON CONFLICT (name) DO UPDATE SET key_hash=excluded.key_hash, credit_micro=excluded.credit_micro, "
        "disabled=excluded.disabled, models=excluded.models, requests_per_minute=excluded.requests_per_minute, "
        "max_concurrency=excluded.max_concurrency, revoked_at=excluded.revoked_at, expires_at=excluded.expires_at, "
        "budget_period=excluded.budget_period, budget_limit_micro=excluded.budget_limit_micro, "
        "requests_window_s=excluded.requests_window_s",
        tuple(json.dumps(k[c]) if c == "models" and k[c] is not None else
              bool(k[c]) if c == "disabled" else k[c] for c in KEY_COLUMNS))


def _reset_budget(tx: PgTransaction, r: dict) -> None:
    tx.send("UPDATE keys SET budget_start = %s, budget_spent_micro = 0 WHERE name = %s",
            (r["budget_start"], r["name"]))


def _hold(tx: PgTransaction, h: dict) -> None:
    tx.send("INSERT INTO reservations (id, key_name, instance_id, provider, model, hold_micro, created_at, "
            "budget_start) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (h["id"], h["key_name"], tx.instance_id, h["provider"], h["model"], h["hold_micro"], h["created_at"],
             h.get("budget_start")))


SETTLE = (
    # one statement: the reservation goes; the charge row goes in unless it is there
    # already (unique by request id and kind), and the overrun row only with it (a
    # settlement that lost the race to another, a survivor's recovery of it, adds no
    # entry of its own); only if the charge went in does the key's spent move, and its
    # budget count when the charge has a period: it counts in its reservation's period,
    # and a period's start never moves back
    "WITH gone AS (DELETE FROM reservations WHERE id = %(request_id)s), "
    f"booked AS (INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES {{charge}} "
    "ON CONFLICT (request_id, kind) DO NOTHING RETURNING kind){overrun} "
    "UPDATE keys SET spent_micro = spent_micro + %(charged)s, "
    "budget_spent_micro = CASE WHEN %(start)s::bigint IS NULL OR budget_start > %(start)s::bigint "
    "THEN budget_spent_micro WHEN budget_start = %(start)s::bigint THEN budget_spent_micro + %(charged)s "
    "ELSE %(charged)s END, "
    "budget_start = CASE WHEN %(start)s::bigint IS NULL OR budget_start > %(start)s::bigint THEN budget_start "
    "ELSE %(start)s::bigint END "
    "WHERE name = %(key_name)s AND EXISTS (SELECT 1 FROM booked WHERE kind = 'charge')"
)
OVERRUN = (f", extra AS (INSERT INTO entries ({', '.join(ENTRY_COLUMNS)}) SELECT {{row}} "
           "WHERE EXISTS (SELECT 1 FROM booked WHERE kind = 'charge') ON CONFLICT (request_id, kind) DO NOTHING)")


def _settle(tx: PgTransaction, s: dict) -> None:
    """Book a settlement once: if its charge row exists, nothing changes."""
    params: dict[str, Any] = {"request_id": s["request_id"], "charged": s["charged"], "key_name": s["key_name"],
                              "start": s.get("budget_start")}
    charge, overrun = "", ""
    for n, entry in enumerate(s["entries"]):
        row = {**entry, "unanswered": json.dumps(list(entry.get("unanswered", ()))), "basis": entry.get("basis", "")}
        params.update({f"e{n}_{c}": row[c] for c in ENTRY_COLUMNS})
        values = ", ".join(f"%(e{n}_{c})s" for c in ENTRY_COLUMNS)
        if entry["kind"] == "charge":
            charge = f"({values})"
        else:
            overrun += OVERRUN.format(row=values)
    tx.send(SETTLE.format(charge=charge, overrun=overrun), params)


_OPS: dict[str, Callable[[PgTransaction, dict], None]] = {
    "put_key": _put_key, "hold": _hold, "settle": _settle, "reset_budget": _reset_budget}
