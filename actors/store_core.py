"""The Responses store's state, synchronous and clock-free (``now`` is an argument).

Memory stays bounded whatever is stored: an index entry per response (owner, age,
size, previous id) answers who may see what and how a chain runs, and at most
``cache_bytes`` of whole records are kept (least recently used first out). A record
that is not in memory is on disk: the core then answers with a ``Read`` -- which ids
to read and how to finish the reply from them -- and the actor reads them in its
worker thread. Records not yet written (``unwritten``, then ``writing`` while a batch
is in the thread) are always answered from memory, so a ``Put`` is visible at once.

Eviction runs oldest first (by ``created_at``) from a heap whose stale entries (a
replaced or deleted response) are skipped. A response older than ``max_age_s`` is
invisible even before a sweep removes it. A single record larger than ``max_bytes``
is not stored (it would evict everything else and then itself).
"""

from __future__ import annotations

import heapq
import logging
import secrets
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

import attrs

from actors.store_db import IndexRow, Row
from actors.store_messages import Chain, Delete, Get, InputItems, Msg, Put, StoredResponse, Sweep

log = logging.getLogger("tollhouse.store")

MAX_CHAIN = 10_000  # links walked back from one response; a longer chain is not rebuilt
ITEM_ID_PREFIXES = {"message": "msg", "function_call_output": "fco", "function_call": "fc", "reasoning": "rs"}


@attrs.frozen
class StoreLimits:
    """What the store may hold: bytes on disk, age, and whole records in memory."""

    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 30 * 24 * 3600.0
    cache_bytes: int = 32 * 1024 * 1024


@attrs.define
class Entry:
    owner: str
    created_at: float
    size: int
    previous_id: str | None
    generation: int  # which Put this is: a heap entry or a disk read of an older one is stale


@attrs.frozen
class Read:
    """A reply that needs records from disk first.

    ``ids`` are to be read; ``known`` are the records memory had when the message was
    handled; ``generations`` say which version of each id was visible then (a record
    read from disk enters the cache only if it is still that version); ``finish`` turns
    every record (by id) into the reply, or None if one is missing.
    """

    ids: tuple[str, ...]
    known: Mapping[str, StoredResponse]
    generations: Mapping[str, int]
    finish: Callable[[Mapping[str, StoredResponse]], Any]


def _item_ids(items: Iterable[dict]) -> tuple[str, ...]:
    """Each item's own id, or a fresh one (also for a repeated id: paging needs them unique)."""
    seen: set[str] = set()
    ids = []
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str) or not item_id or item_id in seen:
            kind = item.get("type", "message" if "role" in item else "item") if isinstance(item, dict) else "item"
            item_id = f"{ITEM_ID_PREFIXES.get(kind, 'item')}_{secrets.token_hex(16)}"
        seen.add(item_id)
        ids.append(item_id)
    return tuple(ids)


class StoreCore:
    def __init__(self, limits: StoreLimits) -> None:
        self.limits = limits
        self.index: dict[str, Entry] = {}
        self.refused_taken = 0  # puts refused: their id is another key's
        self.total_bytes = 0
        self._ages: list[tuple[float, int, str]] = []  # (created_at, generation, id), lazily pruned
        self._generation = 0
        self.cache: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()
        self.cache_used = 0
        self.unwritten: dict[str, Row | None] = {}  # id -> record to put, or None: delete
        self.writing: dict[str, Row | None] = {}  # the batch in the writer's hands
        self.evicted_by_age = 0
        self.evicted_by_size = 0
        self.refused_too_large = 0
        self.disk_reads = 0

    # -- loading and writing

    def load(self, rows: Iterable[IndexRow]) -> None:
        """Rebuild the index from disk (a fresh core, at the actor's start)."""
        for row in rows:
            self._index(row.id, row.owner, row.created_at, row.size, row.previous_id)

    def reindex(self, rows: Iterable[IndexRow], pending: set[str]) -> None:
        """The index as a table other instances share holds it now: what they stored
        comes in, what they removed goes (from memory only: it is gone on disk). The
        ``pending`` ids, this process's writes not yet on disk when the rows were read,
        stay as this process has them."""
        rows = [row for row in rows if row.id not in pending]
        present = {row.id for row in rows}
        for response_id in [i for i in self.index if i not in present and i not in pending]:
            self._remove(response_id)
        for row in rows:
            if row.id not in self.index:
                self._index(row.id, row.owner, row.created_at, row.size, row.previous_id)

    def take_writes(self) -> dict[str, Row | None]:
        """Hand the pending puts and deletes to the writer (they stay readable meanwhile)."""
        self.writing, self.unwritten = self.unwritten, {}
        return self.writing

    def written(self) -> None:
        self.writing = {}

    def write_failed(self) -> None:
        """The batch did not reach disk: it is pending again, behind anything newer."""
        self.unwritten = {**self.writing, **self.unwritten}
        self.writing = {}

    def cached(self, records: Mapping[str, StoredResponse], generations: Mapping[str, int]) -> None:
        """Keep records read from disk, if they are still the visible version."""
        for response_id, record in records.items():
            entry = self.index.get(response_id)
            if entry is not None and entry.generation == generations.get(response_id):
                self._cache(response_id, record, entry.size)

    # -- messages

    def handle(self, msg: Msg, now: float) -> Any:
        match msg:
            case Put(record):
                return self.put(record, now)
            case Get(response_id, owner):
                return self._lookup((response_id,), owner, now, lambda records: records[response_id])
            case InputItems(response_id, owner):
                return self._lookup((response_id,), owner, now, lambda records: records[response_id].listed_input())
            case Chain(response_id, owner):
                ids = self.lineage(response_id, owner, now)
                if ids is None:
                    return None
                return self._lookup(ids, owner, now, _conversation(ids))
            case Delete(response_id, owner):
                return self.delete(response_id, owner, now)
            case Sweep(at):
                return self.sweep(now if at is None else at)
            case _:
                raise TypeError(f"store: unknown message {msg!r}")

    def put(self, record: StoredResponse, now: float) -> None:
        if len(record.input_ids) != len(record.input):
            record = attrs.evolve(record, input_ids=_item_ids(record.input))
        row = Row.of(record)
        if row.size > self.limits.max_bytes:
            self.refused_too_large += 1
            log.warning("response %s not stored: %d bytes is more than the store's max_bytes (%d)",
                        record.id, row.size, self.limits.max_bytes)
            return None
        held = self.index.get(record.id)
        if held is not None and held.owner != record.owner:
            # an upstream that reuses ids must not let one key's response replace another's
            self.refused_taken += 1
            log.warning("response %s not stored: the id already belongs to another key's response", record.id)
            return None
        self._remove(record.id)
        self._index(record.id, record.owner, record.created_at, row.size, record.previous_id)
        self._cache(record.id, record, row.size)
        self.unwritten[record.id] = row
        if self.total_bytes > self.limits.max_bytes:
            self.sweep(now)
        return None

    def delete(self, response_id: str, owner: str, now: float) -> bool:
        if self._visible(response_id, owner, now) is None:
            return False
        self._forget(response_id)
        return True

    def sweep(self, now: float) -> int:
        """Remove expired responses, then the oldest until under ``max_bytes``; how many."""
        cutoff = now - self.limits.max_age_s
        removed = 0
        while self._ages:
            created_at, generation, response_id = self._ages[0]
            if not self._current(response_id, generation):
                heapq.heappop(self._ages)
                continue
            if created_at < cutoff:
                self.evicted_by_age += 1
            elif self.total_bytes > self.limits.max_bytes:
                self.evicted_by_size += 1
            else:
                break
            heapq.heappop(self._ages)
            self._forget(response_id)
            removed += 1
        if len(self._ages) > 2 * len(self.index) + 64:
            self._ages = [(e.created_at, e.generation, i) for i, e in self.index.items()]
            heapq.heapify(self._ages)
        return removed

    def lineage(self, response_id: str, owner: str, now: float) -> tuple[str, ...] | None:
        """The ids from the root of the response's chain to it, or None if one is not visible."""
        ids: list[str] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None:
            if current in seen or len(ids) >= MAX_CHAIN:
                return None
            entry = self._visible(current, owner, now)
            if entry is None:
                return None
            seen.add(current)
            ids.append(current)
            current = entry.previous_id
        ids.reverse()
        return tuple(ids)

    # -- inside

    def _lookup(self, ids: tuple[str, ...], owner: str, now: float,
                finish: Callable[[Mapping[str, StoredResponse]], Any]) -> Any:
        """Finish the reply from memory, or say what to read first (``Read``)."""
        known: dict[str, StoredResponse] = {}
        missing: list[str] = []
        for response_id in ids:
            if self._visible(response_id, owner, now) is None:
                return None
            record = self._in_memory(response_id)
            if record is None:
                missing.append(response_id)
            else:
                known[response_id] = record
        if not missing:
            return finish(known)
        self.disk_reads += 1
        generations = {i: self.index[i].generation for i in missing}
        return Read(tuple(missing), known, generations, _complete(ids, finish))

    def _visible(self, response_id: str, owner: str, now: float) -> Entry | None:
        entry = self.index.get(response_id)
        if entry is None or entry.owner != owner or entry.created_at < now - self.limits.max_age_s:
            return None
        return entry

    def _in_memory(self, response_id: str) -> StoredResponse | None:
        row = self.unwritten.get(response_id) or self.writing.get(response_id)
        if row is not None:
            return row.record
        hit = self.cache.get(response_id)
        if hit is None:
            return None
        self.cache.move_to_end(response_id)
        return hit[0]

    def _current(self, response_id: str, generation: int) -> bool:
        entry = self.index.get(response_id)
        return entry is not None and entry.generation == generation

    def _index(self, response_id: str, owner: str, created_at: float, size: int, previous_id: str | None) -> None:
        self._generation += 1
        self.index[response_id] = Entry(owner, created_at, size, previous_id, self._generation)
        self.total_bytes += size
        heapq.heappush(self._ages, (created_at, self._generation, response_id))

    def _remove(self, response_id: str) -> None:
        """Drop a response from memory (its heap entry goes stale)."""
        entry = self.index.pop(response_id, None)
        if entry is not None:
            self.total_bytes -= entry.size
        hit = self.cache.pop(response_id, None)
        if hit is not None:
            self.cache_used -= hit[1]

    def _forget(self, response_id: str) -> None:
        """Remove a response from memory and, at the next write, from disk."""
        self._remove(response_id)
        self.unwritten[response_id] = None

    def _cache(self, response_id: str, record: StoredResponse, size: int) -> None:
        old = self.cache.pop(response_id, None)
        if old is not None:
            self.cache_used -= old[1]
        if size > self.limits.cache_bytes:
            return
        self.cache[response_id] = (record, size)
        self.cache_used += size
        while self.cache_used > self.limits.cache_bytes:
            _, (_, evicted) = self.cache.popitem(last=False)
            self.cache_used -= evicted

    def statistics(self) -> dict:
        return {"responses": len(self.index), "stored_bytes": self.total_bytes, "cached": len(self.cache),
                "cached_bytes": self.cache_used, "unwritten": len(self.unwritten) + len(self.writing),
                "evicted_by_age": self.evicted_by_age, "evicted_by_size": self.evicted_by_size,
                "refused_too_large": self.refused_too_large, "refused_taken": self.refused_taken,
                "disk_reads": self.disk_reads}


def _conversation(ids: tuple[str, ...]) -> Callable[[Mapping[str, StoredResponse]], tuple[dict, ...]]:
    def build(records: Mapping[str, StoredResponse]) -> tuple[dict, ...]:
        items: list[dict] = []
        for response_id in ids:
            record = records[response_id]
            items.extend(record.input)
            items.extend(record.output())
        return tuple(items)

    return build


def _complete(ids: tuple[str, ...], finish: Callable[[Mapping[str, StoredResponse]], Any]):
    """``finish``, or None when a record the index promised is no longer on disk."""

    def complete(records: Mapping[str, StoredResponse]) -> Any:
        if any(response_id not in records for response_id in ids):
            return None
        return finish(records)

    return complete
