"""The Responses store of the shared backend: its records in Postgres, so a chain
started on one instance continues on another.

The store actor as in the local backend, over ``PgResponseDB``, with two differences.
A message naming a response this instance has not indexed (another instance stored
it) first reads that response's chain of index rows from Postgres, so the core judges
it as if it had been stored here. And no whole record is cached in memory
(``cache_bytes`` 0): a response deleted through another instance is never served from
a stale copy here (its index entry may remain, but the read finds no record and the
answer is the same 404). A delete is answered once it is written. A put is visible to
other instances once its batch is written (the writer commits what arrived while the
previous batch was in the thread: milliseconds after the response's end), so a
response not found is looked for again a few times within a third of a second before
it is answered as unknown. Each sweep first reads the index of every instance's
responses from Postgres, so ``max_bytes`` and ``max_age_s`` bound the one table: the
oldest go, whichever instance stored them.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import attrs
import trio

from actors.mailbox import Envelope, answer
from actors.store import StoreActor
from actors.store_core import StoreLimits
from actors.store_db import StoreReadError
from actors.store_messages import Chain, Delete, Get, InputItems, Sweep
from actors.store_pg import PgResponseDB

log = logging.getLogger("tollhouse.store")

LOOK_AGAIN_S = (0.05, 0.1, 0.2)  # waits before looking again for a response not found (another's batch)


class SharedStoreActor(StoreActor):
    def __init__(self, limits: StoreLimits, db: PgResponseDB, limiter: trio.CapacityLimiter,
                 sweep_interval_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(attrs.evolve(limits, cache_bytes=0), "", limiter, sweep_interval_s, clock)
        self.pg = db

    async def start(self) -> None:
        """Index what Postgres holds; unreachable, start empty (misses are read later)."""
        self.db = self.pg  # type: ignore[assignment]  # the same surface as ResponseDB
        try:
            rows = await trio.to_thread.run_sync(self.pg.index, limiter=self.limiter)
        except StoreReadError as exc:
            log.error("response store %s cannot be read at start (%s); stored responses are read when asked",
                      self.pg.path, exc)
            return
        self.core.load(rows)
        if self.core.sweep(self.clock()):
            self._wake_writer.set()

    async def _dispatch(self, envelope: Envelope, nursery: trio.Nursery) -> None:
        msg = envelope.msg
        if isinstance(msg, Sweep):
            await self._reindex()
        if isinstance(msg, (Get, Delete, InputItems, Chain)) and msg.id not in self.core.index:
            await self._read_slots.acquire()  # looked up in a task: the loop goes on meanwhile
            nursery.start_soon(self._find_then_dispatch, envelope, msg.id, nursery)
            return
        await self._dispatch_indexed(envelope, nursery)

    async def _reindex(self) -> None:
        """Before a sweep: the index as Postgres has it, every instance's responses in
        it, so ``max_bytes`` and ``max_age_s`` bound the one table, not each instance's
        share of it. Unreadable, the sweep goes on with the index this instance has."""
        pending = set(self.core.unwritten) | set(self.core.writing)
        try:
            rows = await trio.to_thread.run_sync(self.pg.index, limiter=self.limiter)
        except StoreReadError as exc:
            log.error("response store %s refused a read (%s)", self.pg.path, exc)
            return
        self.core.reindex(rows, pending)

    async def _find_then_dispatch(self, envelope: Envelope, response_id: str, nursery: trio.Nursery) -> None:
        """Index the chain of a response stored elsewhere, then answer as for one of ours.
        One another instance has just answered may still be in its writer's batch: it
        is looked for again a few times within ``LOOK_AGAIN_S``."""
        try:
            for delay in (0.0, *LOOK_AGAIN_S):
                await trio.sleep(delay)
                try:
                    rows = await trio.to_thread.run_sync(self.pg.lineage, response_id, limiter=self.limiter)
                except StoreReadError as exc:
                    log.error("response store %s refused a read (%s)", self.pg.path, exc)
                    break
                if rows or response_id in self.core.index:
                    self.core.load(row for row in rows if row.id not in self.core.index)
                    break
        finally:
            self._read_slots.release()
        await self._dispatch_indexed(envelope, nursery)

    async def _dispatch_indexed(self, envelope: Envelope, nursery: trio.Nursery) -> None:
        if isinstance(envelope.msg, Delete):
            result = self._step(envelope)
            nursery.start_soon(self._answer_once_written, envelope, result, self._flush_target())
            return
        await super()._dispatch(envelope, nursery)

    async def _answer_once_written(self, envelope: Envelope, result: bool, target: int) -> None:
        """A delete is answered once it is in Postgres: no instance serves it after."""
        while self._batches_done < target:
            await self._written.wait()
        self.handled += 1
        answer(envelope, result)
