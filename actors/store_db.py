"""The Responses store on disk: one SQLite file in the state directory, WAL mode.

Every method is synchronous and runs in the store actor's worker thread (one
``trio.CapacityLimiter(1)``, one connection behind a lock), so the event loop never
waits on disk. ``write`` applies a whole batch of puts and deletes in one transaction
(group commit); ``synchronous=NORMAL`` in WAL mode survives a killed process.

A row keeps its JSON as the store encoded it at ``Put`` (``Row``), so a record is
encoded once, on the event loop where its size is counted, and decoded only when a
read misses the memory cache, here in the thread.

A file SQLite cannot open, read or write at start raises ``StoreFault`` naming the
path (the gateway does not start on a store it cannot trust); a write refused while
serving (a lock, a full disk) raises ``StoreWriteError`` and the actor tries again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Mapping

import attrs

from actors.state_file import open_state_file
from actors.store_messages import StoredResponse

FILE_NAME = "responses.sqlite3"
BUSY_TIMEOUT_MS = 100
READ_CHUNK = 500  # ids per SELECT (SQLite's default limit on bound variables is far above)

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    previous_id TEXT,
    model TEXT NOT NULL,
    provider TEXT,
    credential TEXT,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    input TEXT NOT NULL,
    input_ids TEXT NOT NULL,
    response TEXT NOT NULL
)
"""

COLUMNS = ("id", "owner", "previous_id", "model", "provider", "credential", "created_at", "size", "input",
           "input_ids", "response")


class StoreFault(Exception):
    """The store's file cannot be opened, trusted or written at start."""

    def __init__(self, path: Path, fault: str) -> None:
        super().__init__(f"response store {path}: {fault}")
        self.path = path
        self.fault = fault


class StoreWriteError(Exception):
    """A batch the file refused for now; nothing of it is on disk and it may be retried."""


class StoreReadError(Exception):
    """A read the file refused (a lock held too long, a disk error)."""


def _encode(value) -> str:
    return json.dumps(value, separators=(",", ":"))


@attrs.frozen
class Row:
    """A record ready for disk: its JSON encoded once, and the bytes it counts for."""

    record: StoredResponse
    input_json: str
    input_ids_json: str
    response_json: str
    size: int

    @classmethod
    def of(cls, record: StoredResponse) -> "Row":
        input_json, ids_json, response_json = (_encode(list(record.input)), _encode(list(record.input_ids)),
                                               _encode(record.response))
        size = (len(input_json) + len(ids_json) + len(response_json) + len(record.id) + len(record.owner)
                + len(record.model) + sum(len(s) for s in (record.previous_id, record.provider, record.credential)
                                          if s))
        return cls(record, input_json, ids_json, response_json, size)

    def values(self) -> tuple:
        r = self.record
        return (r.id, r.owner, r.previous_id, r.model, r.provider, r.credential, r.created_at, self.size,
                self.input_json, self.input_ids_json, self.response_json)


@attrs.frozen
class IndexRow:
    """What the actor keeps in memory of every stored response."""

    id: str
    owner: str
    created_at: float
    size: int
    previous_id: str | None


class ResponseDB:
    def __init__(self, state_dir: str | Path) -> None:
        self._lock = threading.Lock()
        self.path, self.db, existed = open_state_file(state_dir, FILE_NAME, StoreFault, "store")
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(SCHEMA)
            self.db.execute("CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at)")
        except sqlite3.Error as exc:
            self.db.close()
            raise StoreFault(self.path, f"cannot be used ({exc})") from exc
        self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def index(self) -> list[IndexRow]:
        """Every stored response's index entry, for (re)building the actor's memory."""
        with self._lock:
            cur = self.db.execute("SELECT id, owner, created_at, size, previous_id FROM responses")
            return [IndexRow(*row) for row in cur.fetchall()]

    def read(self, ids: Iterable[str]) -> dict[str, StoredResponse]:
        """The records of ``ids`` that are on disk (a missing id is simply absent)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, StoredResponse] = {}
        try:
            with self._lock:
                for start in range(0, len(wanted), READ_CHUNK):
                    chunk = wanted[start:start + READ_CHUNK]
                    cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM responses WHERE id IN "
                                          f"({', '.join('?' * len(chunk))})", chunk)
                    for row in cur.fetchall():
                        found[row[0]] = _record(row)
        except sqlite3.OperationalError as exc:
            raise StoreReadError(str(exc)) from exc
        return found

    def write(self, ops: Mapping[str, Row | None]) -> None:
        """Apply a batch in one transaction: a ``Row`` puts (or replaces) its record,
        None deletes that id. All of it is on disk when this returns, or none of it."""
        puts = [row.values() for row in ops.values() if row is not None]
        deletes = [(response_id,) for response_id, row in ops.items() if row is None]
        with self._lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if deletes:
                        db.executemany("DELETE FROM responses WHERE id = ?", deletes)
                    if puts:
                        db.executemany(f"INSERT OR REPLACE INTO responses ({', '.join(COLUMNS)}) "
                                       f"VALUES ({', '.join('?' * len(COLUMNS))})", puts)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise StoreWriteError(str(exc)) from exc


def _record(row: tuple) -> StoredResponse:
    (response_id, owner, previous_id, model, provider, credential, created_at, _size, input_json, ids_json,
     response_json) = row
    return StoredResponse(id=response_id, owner=owner, previous_id=previous_id, model=model, provider=provider,
                          credential=credential, input=json.loads(input_json), response=json.loads(response_json),
                          created_at=created_at, input_ids=json.loads(ids_json))
