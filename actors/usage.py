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

When the ledger refuses a write (locked by another process, a disk error), the batch's
settlements are kept in a backlog that a retry task writes with backoff until it lands;
each Settle is answered when its own write commits, and its hold is listed as
``settling`` meanwhile (the key's in-flight slot was freed at once by the core). Every
other message of the batch is undone in the core and refused with ``LedgerUnavailable``,
and so is every new reserve or key change while the backlog is not empty (without a
backlog, each batch tries the ledger again): nothing is held in memory that the ledger
does not have.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Iterable, Mapping, Protocol

import attrs
import trio

from actors.base import Actor
from actors.durations import LEDGER_COMMIT_BOUNDS, Durations
from actors.ledger import Ledger, LedgerFault, LedgerWriteError
from actors.mailbox import Envelope, Mailbox, answer, crash_reply
from actors.usage_core import UsageCore
from actors.usage_messages import (
    Authenticate,
    CreateKey,
    Msg,
    Persist,
    Query,
    Reconfigure,
    Reservation,
    Reserve,
    RevokeKey,
    Settle,
    Settled,
    UpdateKey,
    hash_key,
)
from protocols.errors import GatewayError, LedgerUnavailable
from protocols.money import Price

log = logging.getLogger("tollhouse.usage")

__all__ = ["Authenticate", "CreateKey", "Msg", "Persist", "Query", "Reconfigure", "Reservation", "Reserve", "RevokeKey", "Settle",
           "Settled", "UpdateKey", "UsageActor", "hash_key"]

BATCH = 256
CHECKPOINT_EVERY = 256  # commits between the ledger's checkpoints (its WAL stays a few MB)
RETRY_FIRST_S = 0.05  # the first retry of a refused write; doubles up to RETRY_MAX_S
RETRY_MAX_S = 1.0
UNAVAILABLE = ("The gateway's usage ledger cannot be written right now; no new requests are "
               "accepted until it can. Retry later.")


class MeterLedger(Protocol):
    """What the meter and the admin reads use of a ledger (SQLite's, or Postgres's)."""

    path: Any  # how logs name it (a file, or the word "postgres": never a DSN)

    def apply(self, ops: Iterable[tuple[str, Any]]) -> None: ...
    def close(self) -> None: ...
    def entries(self, request_id: str | None = None) -> list[dict]: ...
    def totals(self, since: float | None = None) -> dict: ...
    def recent_requests(self, limit: int, key_name: str | None = None) -> list[dict]: ...
    def series(self, since: float, bucket_s: int) -> list[dict]: ...


@attrs.define
class Step:
    """One handled message of a batch: its answer, its ledger writes, how to undo it."""

    envelope: Envelope
    result: Any
    ops: list
    undo: Any = None  # () -> None: forgets it in the core if its write is refused
    parked: bool = False  # a settlement in the backlog: answered when it is written


@attrs.define
class Unwritten:
    """A settlement the ledger refused so far, and everyone waiting for it."""

    ops: list
    result: Settled
    waiters: list = attrs.field(factory=list)


class UsageActor(Actor):
    """Batches messages, commits their ledger writes in one transaction, then answers."""

    name = "usage"
    inline_safe = False  # its replies wait for a disk write...
    inline_async = True  # ...which an idle meter lets the caller's task await itself

    def __init__(self, pricing: Mapping[str, Price], state_dir: str, key_specs: Iterable[Any],
                 limiter: trio.CapacityLimiter, first_start: list, commit_times: Durations | None = None) -> None:
        super().__init__()
        # how long each commit took, thread hop included (kept by the caller across restarts)
        self.commit_times = commit_times if commit_times is not None else Durations(LEDGER_COMMIT_BOUNDS)
        self.core = UsageCore(pricing)
        self.state_dir = state_dir
        self.key_specs = tuple(key_specs)
        self.limiter = limiter
        self._first_start = first_start  # shared one-element flag: recovery runs once per process
        self.ledger: MeterLedger | None = None
        self.commits = 0
        self.recovered = 0
        self.settles = 0
        self._settled_signal: trio.Event | None = None  # made by a waiter (``_settled``), set by a commit
        self.backlog: dict[str, Unwritten] = {}  # request id -> settlement not yet on disk
        self.fault: str | None = None  # why the ledger refuses writes, while it does
        self.write_failures = 0
        self._backlog_added = trio.Event()
        self.unwritten_holds: dict[str, list] = {}  # deferred reserves' ledger ops, by request id
        self._unchecked = 0  # commits since the ledger's last checkpoint
        self._checkpoint_due = trio.Event()
        self._whole: set[str] = set()  # this batch's settlements whose holds were never written
        # The hashes of every key the core knows, replaced (never mutated) whenever keys
        # change, so the front doors can refuse a stranger from its headers without a
        # message to this actor. None until ``start`` has loaded the keys.
        self.key_hashes: frozenset[str] | None = None

    async def start(self) -> None:
        """Open and check the ledger, load it, seed config keys, recover a previous
        process's open holds. A ledger that cannot be trusted raises ``LedgerFault``:
        the gateway does not start."""
        ledger = self.ledger = await trio.to_thread.run_sync(Ledger, self.state_dir, limiter=self.limiter)
        keys, holds = await trio.to_thread.run_sync(ledger.load, limiter=self.limiter)
        self.core.load(keys, holds)
        ops = self.core.seed_keys(self.key_specs)
        if self._first_start and self._first_start[0]:
            self._first_start[0] = False
            recovered = self.core.recover()
            self.recovered = len(recovered)
            ops.extend(recovered)
        if ops:
            try:
                await trio.to_thread.run_sync(ledger.apply, ops, limiter=self.limiter)
            except LedgerWriteError as exc:
                ledger.close()
                raise LedgerFault(ledger.path, f"cannot be written ({exc})") from exc
            self.core.written(op[1]["request_id"] for op in ops if op[0] == "settle")
        self._publish_key_hashes()

    async def run(self, mailbox: Mailbox) -> None:
        receive = mailbox.receive_channel
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_backlog)
                nursery.start_soon(self._checkpoints)
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
        """One message in the caller's task; a settlement the ledger refused keeps its
        caller waiting here for the retry's commit (the caller's own deadline applies)."""
        if await self._process([envelope]) and envelope.reply is not None:
            await envelope.reply.wait()

    async def _process(self, batch: list[Envelope]) -> bool:
        """Handle a batch, write it in one transaction, answer it. True if some of its
        settlements wait in the backlog (their answers come when they are written)."""
        now = trio.current_time()
        steps: list[Step] = []
        parked = False
        self._whole.clear()
        for envelope in batch:
            msg = envelope.msg
            if isinstance(msg, Settle) and msg.request_id in self.backlog:
                self.backlog[msg.request_id].waiters.append(envelope)  # asked again: same answer, same commit
                parked = True
                continue
            if isinstance(msg, Persist):
                steps.append(Step(envelope, None, self.unwritten_holds.pop(msg.request_id, [])))
                continue
            undo = self._undo(msg, now)
            try:
                result, ops = self._deferred(msg, *self.core.handle(msg, now))
            except GatewayError as exc:
                steps.append(Step(envelope, exc, []))
                continue
            except Exception as exc:
                for step in steps:
                    crash_reply(step.envelope, self.name, exc)
                crash_reply(envelope, self.name, exc)
                raise
            steps.append(Step(envelope, result, ops, undo))
        writes = [step for step in steps if step.ops]
        if writes and not self.backlog:  # with settlements waiting, the ledger is known to refuse
            try:
                await self._write([op for step in writes for op in step.ops])
            except LedgerWriteError as exc:
                self._refused(exc)
            except Exception as exc:
                for step in steps:
                    crash_reply(step.envelope, self.name, exc)
                raise
            else:
                self.commits += 1
                self.fault = None
                self.core.written(step.result.request_id for step in writes if isinstance(step.result, Settled))
                writes = []
        for step in reversed(writes):  # the ledger refused them: park settlements, undo the rest
            if isinstance(step.result, Settled) and step.result.request_id in self._whole:
                self._unbook(step)  # its client has seen nothing: refused, and nothing is owed
                step.result = LedgerUnavailable(
                    "The gateway's usage ledger cannot be written right now; this request was not "
                    "booked and its answer is withheld. Retry later.", retry_after=1.0)
            elif isinstance(step.result, Settled):
                self.backlog[step.result.request_id] = Unwritten(step.ops, step.result, [step.envelope])
                self._backlog_added.set()
                step.parked = parked = True
            else:
                if isinstance(step.envelope.msg, Persist):
                    self.unwritten_holds[step.envelope.msg.request_id] = step.ops  # its settlement books it
                else:
                    step.undo()
                step.result = LedgerUnavailable(UNAVAILABLE, retry_after=1.0)
        if any(isinstance(step.envelope.msg, (CreateKey, UpdateKey, RevokeKey, Reconfigure)) for step in steps):
            self._publish_key_hashes()  # before the answers: a created key works once it is answered
        for step in steps:
            if not step.parked:
                self._answer(step.envelope, step.result)
        self._signal()
        return parked

    def _deferred(self, msg: Msg, result: Any, ops: list) -> tuple[Any, list]:
        """A reserve whose caller makes it durable before its client sees a byte keeps
        its hold off the disk until ``Persist`` or its settlement, which writes it in
        the same transaction: a whole answer costs one commit, and a crash loses at most
        a request whose client received nothing. While the ledger is known to refuse
        writes (a write refused, settlements waiting), a reserve is written (and so
        refused) as before."""
        if isinstance(msg, Reserve) and msg.defer_write and ops and not self.backlog and self.fault is None:
            self.unwritten_holds[msg.request_id] = ops
            return attrs.evolve(result, deferred=True), []
        if isinstance(msg, Settle) and self.unwritten_holds.pop(msg.request_id, None) is not None and ops:
            self._whole.add(msg.request_id)  # its hold row is never needed: this write books it whole
        return result, ops

    def _unbook(self, step: Step) -> None:
        """Forget a request booked whole in a write the ledger refused: as if it never
        came (its hold was already released by the settlement)."""
        result: Settled = step.result
        [(_, op)] = step.ops
        core = self.core
        core.settling.pop(result.request_id, None)
        core.settled.pop(result.request_id, None)
        core.totals["requests"] -= 1
        core.totals["charged_micro"] -= result.charged_micro
        core.totals["overrun_micro"] -= result.overrun_micro
        state = core.keys.get(op["key_name"])
        if state is not None:
            state.spent_micro -= op["charged"]
            if op["budget_start"] is not None:
                state.budget_spent_micro -= op["charged"]

    def _publish_key_hashes(self) -> None:
        self.key_hashes = frozenset(self.core.by_hash)

    def _undo(self, msg: Msg, now: float):
        """How to forget ``msg`` in the core if the ledger refuses its write."""
        match msg:
            case Reserve():
                return lambda: self.core.cancel_reserve(msg.request_id, now)
            case CreateKey() | UpdateKey() | RevokeKey():
                settings = self.core.settings(msg.name)
                return lambda: self.core.restore(msg.name, settings)
            case Reconfigure():
                pricing = self.core.pricing
                known = set(self.core.keys)

                def undo() -> None:
                    self.core.pricing = pricing
                    self.core.forget_keys([name for name in self.core.keys if name not in known])

                return undo
            case _:
                return None

    async def _write(self, ops: list) -> None:
        began = time.perf_counter()
        try:
            if not self._write_now(ops):
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.ledger.apply, ops, limiter=self.limiter)
        finally:
            self.commit_times.observe(time.perf_counter() - began)

    def _write_now(self, ops: list) -> bool:
        """The commit on the event loop when the ledger can take it at once (SQLite's: a
        write to its WAL, cheaper than the thread hand-off); False to write in the thread."""
        apply_now = getattr(self.ledger, "apply_now", None)
        if apply_now is None:
            return False
        self._unchecked += 1
        if self._unchecked >= CHECKPOINT_EVERY:
            self._checkpoint_due.set()
        return apply_now(ops)

    async def _checkpoints(self) -> None:
        """The ledger's checkpoints, in the worker thread, every ``CHECKPOINT_EVERY``
        commits (a commit meanwhile waits for it in the thread, not on the event loop)."""
        while True:
            await self._checkpoint_due.wait()
            self._checkpoint_due = trio.Event()
            self._unchecked = 0
            try:
                await trio.to_thread.run_sync(self.ledger.checkpoint, limiter=self.limiter)
            except sqlite3.Error as exc:  # a busy or failing file: the next one tries again
                log.warning("usage ledger %s: checkpoint failed (%s)", self.ledger.path, exc)

    def _refused(self, exc: LedgerWriteError) -> None:
        self.write_failures += 1
        if self.fault is None:
            log.error("usage ledger %s refused a write (%s): holding settlements and refusing new "
                      "requests until it can be written", self.ledger.path, exc)
        self.fault = str(exc)

    def _answer(self, envelope: Envelope, result: Any) -> None:
        self.handled += 1
        if isinstance(result, Settled):
            self.settles += 1
        answer(envelope, result)

    def _signal(self) -> None:
        if self._settled_signal is not None:
            self._settled_signal.set()
            self._settled_signal = None

    def _settled(self) -> trio.Event:
        """The event the next commit sets, made on demand: a commit nobody waits for
        makes none."""
        if self._settled_signal is None:
            self._settled_signal = trio.Event()
        return self._settled_signal

    async def _write_backlog(self) -> None:
        """Write refused settlements until they land, backing off, without a caller."""
        delay = RETRY_FIRST_S
        while True:
            await self._backlog_added.wait()
            self._backlog_added = trio.Event()
            while self.backlog:
                await trio.sleep(delay)
                pending = list(self.backlog.items())
                try:
                    await self._write([op for _, unwritten in pending for op in unwritten.ops])
                except LedgerWriteError as exc:
                    self._refused(exc)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.commits += 1
                self.core.written(request_id for request_id, _ in pending)
                for request_id, unwritten in pending:
                    del self.backlog[request_id]
                    for envelope in unwritten.waiters:
                        self._answer(envelope, unwritten.result)
                self._signal()
            if self.fault is not None:
                log.warning("usage ledger %s is writable again; every held settlement is written",
                            self.ledger.path)
            self.fault = None
            delay = RETRY_FIRST_S

    async def retire(self) -> None:
        """A graceful stop's last step, once every settlement is written: nothing to do
        for a ledger only this process uses (the shared meter leaves its instances)."""

    async def wait_settles(self, n: int) -> None:
        """Return once ``n`` settlements have been committed by this actor (for tests
        and tools that must observe the meter without polling)."""
        while self.settles < n:
            await self._settled().wait()

    async def wait_written(self) -> None:
        """Return once no settlement waits in the backlog (a stop's last flush)."""
        while self.backlog:
            await self._settled().wait()

    async def read(self, fn, *args):
        """Run a read-only ledger query off the event loop (admin views)."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def snapshot(self) -> dict:
        return {"keys": len(self.core.keys), "open_reservations": len(self.core.holds),
                "settling": len(self.backlog), "ledger_fault": self.fault, "write_failures": self.write_failures,
                "commits": self.commits, "recovered_at_start": self.recovered, **self.core.query("totals")}
