"""The Responses store: responses kept for ``previous_response_id``, GET/DELETE and
input items, each visible only to the gateway key that created it.

The core (``store_core``) answers from memory; what it must read from disk it names
in a ``Read``, which a task of this actor runs in the worker thread and answers when
the records arrive, while the loop goes on with the next message (at most
``MAX_READS`` reads wait at once; past that the inbox fills and callers wait). Puts
and deletes are written by one writer task in batches: everything that arrived while
the previous batch was in the thread goes in the next transaction. A write the file
refuses is retried with backoff; the records stay readable from memory meanwhile.

The worker thread has its own ``trio.CapacityLimiter(1)`` and the connection its own
lock, so SDK or other threads never starve the store and no two statements overlap.
A stop (cancel) or a crash writes what is still pending before the file closes, so a
new actor on the same ``state_dir`` sees every response that was put.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import trio

from actors.base import Actor
from actors.mailbox import Envelope, Mailbox, answer, crash_reply
from actors.store_core import Read, StoreCore, StoreLimits
from actors.store_db import ResponseDB, StoreReadError, StoreWriteError
from actors.store_messages import (Chain, Delete, Flush, Get, InputItems, Msg, Put, Snapshot, StoredResponse,
                                   Sweep)
from protocols.errors import GatewayFailure

log = logging.getLogger("tollhouse.store")

__all__ = ["Chain", "Delete", "Flush", "Get", "InputItems", "Msg", "Put", "Snapshot", "StoreActor", "StoreLimits",
           "StoredResponse", "Sweep"]

MAX_READS = 64  # disk reads waiting at once
RETRY_FIRST_S = 0.05  # the first retry of a refused write; doubles up to RETRY_MAX_S
RETRY_MAX_S = 2.0
LAST_WRITE_S = 10.0  # how long a stopping actor may take to write what is pending


class StoreActor(Actor):
    name = "store"
    inline_safe = False  # a miss is answered from a disk read

    def __init__(self, limits: StoreLimits, state_dir: str, limiter: trio.CapacityLimiter,
                 sweep_interval_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.core = StoreCore(limits)
        self.state_dir = state_dir
        self.limiter = limiter
        self.sweep_interval_s = sweep_interval_s
        self.clock = clock  # unix seconds: stored responses carry wall-clock created_at
        self.db: ResponseDB | None = None
        self.commits = 0
        self.write_failures = 0
        self.fault: str | None = None  # why the file refuses writes, while it does
        self._batches_taken = 0
        self._batches_done = 0  # the last batch on disk (every earlier one is too)
        self._written = trio.Event()  # set (and replaced) at each commit
        self._refused = trio.Event()  # set (and replaced) at each refused write
        self._wake_writer = trio.Event()
        self._read_slots = trio.Semaphore(MAX_READS)

    async def start(self) -> None:
        self.db = await trio.to_thread.run_sync(ResponseDB, self.state_dir, limiter=self.limiter)
        rows = await trio.to_thread.run_sync(self.db.index, limiter=self.limiter)
        self.core.load(rows)
        if self.core.sweep(self.clock()):  # limits lowered, or the gateway was down past an age
            self._wake_writer.set()

    async def run(self, mailbox: Mailbox) -> None:
        receive = mailbox.receive_channel
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._sweep_loop, mailbox)
                while True:
                    envelope = await receive.receive()
                    try:
                        await self._dispatch(envelope, nursery)
                    finally:
                        mailbox.pending -= 1
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self._last_write()
                finally:
                    self.db.close()

    def _step(self, envelope: Envelope):
        """The core's answer to a message (a crash of it is the asker's too); a change
        to write wakes the writer."""
        try:
            result = self.core.handle(envelope.msg, self.clock())
        except Exception as exc:
            crash_reply(envelope, self.name, exc)
            raise
        if self.core.unwritten:
            self._wake_writer.set()
        return result

    async def _dispatch(self, envelope: Envelope, nursery: trio.Nursery) -> None:
        msg = envelope.msg
        if isinstance(msg, Flush):
            nursery.start_soon(self._answer_when_written, envelope, self._flush_target())
            return
        if isinstance(msg, Snapshot):
            self.handled += 1
            return answer(envelope, self.snapshot())
        result = self._step(envelope)
        if isinstance(result, Read):
            await self._read_slots.acquire()
            nursery.start_soon(self._read_and_answer, envelope, result)
            return
        self.handled += 1
        answer(envelope, result)

    async def _read_and_answer(self, envelope: Envelope, read: Read) -> None:
        try:
            try:
                found = await trio.to_thread.run_sync(self.db.read, read.ids, limiter=self.limiter)
            except StoreReadError as exc:
                log.error("response store %s refused a read (%s)", self.db.path, exc)
                answer(envelope, GatewayFailure("Stored responses cannot be read right now; retry later."))
                return
            self.core.cached(found, read.generations)
            try:
                result = read.finish({**read.known, **found})
            except Exception as exc:
                crash_reply(envelope, self.name, exc)
                raise
            self.handled += 1
            answer(envelope, result)
        finally:
            self._read_slots.release()

    # -- writing

    def _flush_target(self) -> int:
        """The batch that, once on disk, holds everything put or deleted so far."""
        if self.core.unwritten:
            return self._batches_taken + 1
        return self._batches_taken

    async def _answer_when_written(self, envelope: Envelope, target: int) -> None:
        while self._batches_done < target:
            await self._written.wait()
        self.handled += 1
        answer(envelope, None)

    async def _write_loop(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            while self.core.unwritten:
                if await self._write_batch():
                    delay = RETRY_FIRST_S
                else:
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)

    async def _write_batch(self) -> bool:
        """Write what is pending in one transaction; False if the file refused it."""
        batch = self.core.take_writes()
        self._batches_taken += 1
        number = self._batches_taken
        try:
            await trio.to_thread.run_sync(self.db.write, batch, limiter=self.limiter)
        except StoreWriteError as exc:
            self.core.write_failed()
            self.write_failures += 1
            if self.fault is None:
                log.error("response store %s refused a write (%s); retrying, responses stay readable meanwhile",
                          self.db.path, exc)
            self.fault = str(exc)
            self._refused.set()
            self._refused = trio.Event()
            return False
        except BaseException:
            self.core.write_failed()  # cancelled before the thread took it: still pending
            raise
        self.core.written()
        self.commits += 1
        self.fault = None
        self._batches_done = number
        self._written.set()
        self._written = trio.Event()
        return True

    async def _last_write(self) -> None:
        """On the way out (stop or crash): write what is still pending, within a bound."""
        with trio.move_on_after(LAST_WRITE_S):
            self.core.write_failed()  # a batch interrupted in flight is pending again
            while self.core.unwritten:
                if not await self._write_batch():
                    await trio.sleep(RETRY_FIRST_S)
        if self.core.unwritten:
            log.error("response store %s: %d responses were not written before it closed", self.db.path,
                      len(self.core.unwritten))

    async def wait_write_failures(self, n: int) -> None:
        """Return once ``n`` writes have been refused (for tests and tools that must
        observe a refusal without polling)."""
        while self.write_failures < n:
            await self._refused.wait()

    async def _sweep_loop(self, mailbox: Mailbox) -> None:
        while True:
            await trio.sleep(self.sweep_interval_s)
            await mailbox.tell(Sweep())

    def snapshot(self) -> dict:
        return {**self.core.statistics(), "commits": self.commits, "write_failures": self.write_failures,
                "fault": self.fault}
