"""The Responses store of the shared backend: the ``responses`` table in Postgres.

The same surface as ``ResponseDB`` (``index``, ``read``, ``write``, ``close``) for the
store actor, plus ``lineage``: the index rows of a response and its ancestors, for an
instance that has not seen them (another instance stored them). The table is created
by the ledger's migrations (``actors/ledger_pg_schema.py``). One synchronous psycopg
connection, used from the store actor's worker thread; faults surface as
``StoreWriteError`` / ``StoreReadError`` without the connection string.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import psycopg

from actors.ledger_pg import WHAT, describe
from actors.pg_connection import PgConnection
from actors.store_core import MAX_CHAIN
from actors.store_db import COLUMNS, READ_CHUNK, IndexRow, Row, StoreReadError, StoreWriteError, _record
from actors.store_messages import StoredResponse

INDEX_COLUMNS = "id, owner, created_at, size, previous_id"


class PgResponseDB(PgConnection):
    path = WHAT

    def __repr__(self) -> str:
        return "PgResponseDB()"  # never the DSN

    def _rows(self, sql: str, params=None) -> list:
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable) as exc:
                self._drop()  # UndefinedTable: the ledger has not migrated this database yet
                raise StoreReadError(describe(exc)) from None

    def index(self) -> list[IndexRow]:
        return [IndexRow(*row) for row in self._rows(f"SELECT {INDEX_COLUMNS} FROM responses")]

    def lineage(self, response_id: str) -> list[IndexRow]:
        """The index rows of ``response_id`` and of every response before it in its chain."""
        return [IndexRow(*row) for row in self._rows(
            f"WITH RECURSIVE chain AS (SELECT {INDEX_COLUMNS}, 1 AS depth FROM responses WHERE id = %s "
            f"UNION ALL SELECT r.id, r.owner, r.created_at, r.size, r.previous_id, c.depth + 1 FROM responses r "
            f"JOIN chain c ON r.id = c.previous_id WHERE c.depth < %s) SELECT {INDEX_COLUMNS} FROM chain",
            (response_id, MAX_CHAIN))]

    def read(self, ids: Iterable[str]) -> dict[str, StoredResponse]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, StoredResponse] = {}
        for start in range(0, len(wanted), READ_CHUNK):
            for row in self._rows(f"SELECT {', '.join(COLUMNS)} FROM responses WHERE id = ANY(%s)",
                                  (wanted[start:start + READ_CHUNK],)):
                found[row[0]] = _record(row)
        return found

    def write(self, ops: Mapping[str, Row | None]) -> None:
        """Apply a batch in one transaction: a ``Row`` puts (or replaces) its record,
        None deletes that id."""
        puts = [row.values() for row in ops.values() if row is not None]
        deletes = [(response_id,) for response_id, row in ops.items() if row is None]
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction(), conn.cursor() as cur:
                    if deletes:
                        cur.executemany("DELETE FROM responses WHERE id = %s", deletes)
                    if puts:
                        cur.executemany(f"INSERT INTO responses ({', '.join(COLUMNS)}) VALUES "
                                        f"({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (id) DO UPDATE SET {updates}",
                                        puts)
            except (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.UndefinedTable) as exc:
                self._drop()
                raise StoreWriteError(describe(exc)) from None
