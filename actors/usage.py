"""Gateway keys, credit, reservations and settlement: the meter.

``Reserve`` authenticates the key, checks its model allow-list, and holds the
request's worst-case cost (estimated input plus the output allowance, at the dearest
target of its plan) against the key's available credit: ``credit - spent - held``.
``Settle`` ends a reservation exactly once: it charges the actual cost when usage was
seen (the provider's own reported cost if it sent one), otherwise the hold, marked
``estimated``; a charge above the hold is booked in full, with a separate ``overrun``
entry so no over-spend is silent. Settling an already settled request returns the
first result and changes nothing.

The core is synchronous and returns the ledger operations each message implies; the
actor's loop writes a whole batch of them in one transaction in a worker thread, and
answers the batch only after the commit.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import trio

from actors.base import Actor
from actors.ledger import Ledger
from actors.mailbox import Envelope, Mailbox, answer, crash_reply
from actors.usage_core import UsageCore
from actors.usage_messages import (
    Authenticate,
    CreateKey,
    Msg,
    Query,
    Reservation,
    Reserve,
    Settle,
    Settled,
    UpdateKey,
    hash_key,
)
from protocols.errors import GatewayError
from protocols.money import Price

__all__ = ["Authenticate", "CreateKey", "Msg", "Query", "Reservation", "Reserve", "Settle", "Settled",
           "UpdateKey", "UsageActor", "hash_key"]

BATCH = 256


class UsageActor(Actor):
    """Batches messages, commits their ledger writes in one transaction, then answers."""

    name = "usage"
    inline_safe = False  # its replies wait for a disk write...
    inline_async = True  # ...which an idle meter lets the caller's task await itself

    def __init__(self, pricing: Mapping[str, Price], state_dir: str, key_specs: Iterable[Any],
                 limiter: trio.CapacityLimiter, first_start: list) -> None:
        super().__init__()
        self.core = UsageCore(pricing)
        self.state_dir = state_dir
        self.key_specs = tuple(key_specs)
        self.limiter = limiter
        self._first_start = first_start  # shared one-element flag: recovery runs once per process
        self.ledger: Ledger | None = None
        self.commits = 0
        self.recovered = 0
        self.settles = 0
        self._settled_signal = trio.Event()

    async def start(self) -> None:
        self.ledger = await trio.to_thread.run_sync(Ledger, self.state_dir, limiter=self.limiter)
        keys, holds = await trio.to_thread.run_sync(self.ledger.load, limiter=self.limiter)
        self.core.load(keys, holds)
        ops = self.core.seed_keys(self.key_specs)
        if self._first_start and self._first_start[0]:
            self._first_start[0] = False
            recovered = self.core.recover()
            self.recovered = len(recovered)
            ops.extend(recovered)
        if ops:
            await trio.to_thread.run_sync(self.ledger.apply, ops, limiter=self.limiter)

    async def run(self, mailbox: Mailbox) -> None:
        receive = mailbox.receive_channel
        try:
            while True:
                batch = [await receive.receive()]
                while len(batch) < BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await self._process(batch)
                finally:
                    mailbox.pending -= len(batch)
        finally:
            if self.ledger is not None:
                self.ledger.close()

    async def handle_now(self, envelope: Envelope) -> None:
        await self._process([envelope])

    async def _process(self, batch: list[Envelope]) -> None:
        ops: list = []
        replies: list[tuple[Envelope, Any]] = []
        for envelope in batch:
            try:
                result, more = self.core.handle(envelope.msg, trio.current_time())
            except GatewayError as exc:
                replies.append((envelope, exc))
                continue
            except Exception as exc:
                for env, _ in replies:
                    crash_reply(env, self.name, exc)
                crash_reply(envelope, self.name, exc)
                raise
            ops.extend(more)
            replies.append((envelope, result))
        if ops:
            try:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.ledger.apply, ops, limiter=self.limiter)
            except Exception as exc:
                for env, _ in replies:
                    crash_reply(env, self.name, exc)
                raise
            self.commits += 1
        for envelope, result in replies:
            self.handled += 1
            if isinstance(result, Settled):
                self.settles += 1
            answer(envelope, result)
        self._settled_signal.set()
        self._settled_signal = trio.Event()

    async def wait_settles(self, n: int) -> None:
        """Return once ``n`` settlements have been committed by this actor (for tests
        and tools that must observe the meter without polling)."""
        while self.settles < n:
            await self._settled_signal.wait()

    async def read(self, fn, *args):
        """Run a read-only ledger query off the event loop (admin views)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def snapshot(self) -> dict:
        return {"keys": len(self.core.keys), "open_reservations": len(self.core.holds),
                "commits": self.commits, "recovered_at_start": self.recovered, **self.core.query("totals")}
