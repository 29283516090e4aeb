"""The shared meter: the usage actor of the ``shared`` backend, whose ledger is Postgres.

Several processes meter one set of keys, and the pure core (``UsageCore``) stays the
one decider: each batch runs in one Postgres transaction that locks the rows of the
keys it touches (``SELECT ... FOR UPDATE``, in name order), refreshes the core's records
of them from the ledger (credit, spent, settings, budget count; held amount and count
from the open reservations of every instance), runs the core on the batch, writes its
operations, and commits -- and only then are its messages answered. A reserve's credit
check and its reservation row are in one transaction: two instances never spend the
same credit. A key created, changed or revoked on one instance is read by the next
batch on any other that touches it (an unknown key is looked up before it is refused).

A key's ``requests_per_minute`` is counted in a ``Windows`` (shared across processes
when the backend gives one) before the batch, in the key's ``requests_window_s``; its
``max_concurrency`` is judged from the open reservations in Postgres, exact across
processes.

Instances: each batch that may open a hold and each heartbeat (every ``heartbeat_s``)
marks this instance alive in Postgres time; the heartbeat also sweeps: an instance
whose heartbeat is older than ``instance_ttl_s`` is claimed by deleting its row (one
survivor wins the delete) and its open holds are settled ``recovered`` in the same
transaction, at the rule of a crash recovery. A sweeper claims only once it has itself reached Postgres without a
fault for a whole ``instance_ttl_s`` (after a start or an outage), so an outage that
stopped every heartbeat is not taken for the death of the others. A graceful stop removes this instance's row after its last settlement.

Postgres unreachable: as the SQLite ledger refusing writes (settlements backlogged and
retried, everything else refused with ``LedgerUnavailable``); unreachable at start,
the meter starts faulted (``/readyz`` says ``ledger_unavailable``) and keeps trying.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Iterable, Mapping

import trio

from actors.durations import Durations
from actors.ledger import LedgerFault, LedgerWriteError
from actors.ledger_pg import PgLedger, PgTransaction
from actors.mailbox import Envelope, crash_reply
from actors.usage import UNAVAILABLE, Step, Unwritten, UsageActor
from actors.usage_core import UsageCore, reservation_view
from actors.usage_messages import (
    AllowedModels,
    Authenticate,
    CreateKey,
    Query,
    Reconfigure,
    Reserve,
    RevokeKey,
    Settle,
    Settled,
    UpdateKey,
    hash_key,
)
from actors.usage_refresh import adopt, refresh
from actors.windows import Windows
from protocols.errors import GatewayError, LedgerUnavailable
from protocols.money import Price
from protocols.unified import EndReason, Provenance

log = logging.getLogger("tollhouse.usage")

CONNECT_RETRY_S = 1.0  # while Postgres is unreachable at start: how often to try again
LISTED_HOLDS = 10_000  # the most reservations /admin/reservations lists



class SharedUsageActor(UsageActor):
    """The usage actor over a Postgres ledger that other instances share."""

    def __init__(self, pricing: Mapping[str, Price], ledger: PgLedger, key_specs: Iterable[Any],
                 limiter: trio.CapacityLimiter, windows: Windows, first_start: list, heartbeat_s: float,
                 instance_ttl_s: float, commit_times: Durations | None = None, wall=time.time) -> None:
        super().__init__(pricing, "", key_specs, limiter, first_start, commit_times)
        self.core = UsageCore(pricing, wall=wall, count_requests=False)
        self.pg = ledger
        self.windows = windows
        self.heartbeat_s = heartbeat_s
        self.instance_ttl_s = instance_ttl_s
        self.connected = False
        self.retired = False
        self.swept = 0  # holds of expired instances this one settled
        self.forgotten = 0  # holds of this instance written though refused, settled at no charge
        self.claimed: list[str] = []  # instances this one took for dead
        self._step = trio.Lock()  # one batch, sweep or start at a time: they share the core
        self._up_since: float | None = None  # since when Postgres has answered without a fault

    @property
    def instance_id(self) -> str:
        return self.pg.instance_id

    # ------------------------------------------------------------ start, run, stop

    async def start(self) -> None:
        """Connect, migrate, register, seed config keys, recover this id's earlier holds.
        ``LedgerFault`` (a schema from a newer gateway, an id in use) refuses the start;
        an unreachable Postgres does not: the meter starts faulted and keeps trying."""
        self.ledger = self.pg
        try:
            await self._connect()
        except LedgerFault:
            self.pg.close()
            raise
        except LedgerWriteError as exc:
            self.fault = str(exc)
            log.error("usage ledger %s unreachable at start (%s): refusing requests until it answers",
                      self.pg.path, exc)

    async def _connect(self) -> None:
        async with self._step:
            await trio.to_thread.run_sync(self.pg.open, limiter=self.limiter)
            recover = bool(self._first_start and self._first_start[0])
            settled: list[str] = []
            try:
                await self._thread(self.pg.transaction, partial(self._start_tx, recover, settled))
            except BaseException:  # rolled back: the next try starts from a core that decided nothing
                self.core = UsageCore(self.core.pricing, wall=self.core.wall, count_requests=False)
                raise
            if recover:
                self._first_start[0] = False
            self.recovered = len(settled)
            self.core.written(settled)
            self.connected, self.fault = True, None
            self._up_since = trio.current_time()
            self._publish_key_hashes()

    def _start_tx(self, recover: bool, settled: list, tx: PgTransaction) -> None:
        age = tx.live_age()
        if recover and age is not None and age < self.instance_ttl_s:
            raise LedgerFault(self.pg.path, f"the instance id {self.instance_id!r} is in use by a live instance "
                                            f"(its heartbeat is {age:.1f}s old): give each instance its own "
                                            "state.instance_id")
        tx.register()
        tx.seed_lock()
        wall = self.core.wall()
        keys = tx.all_keys()
        refresh(self.core, keys, tx.held(k["name"] for k in keys), wall)
        ops = self.core.seed_keys(self.key_specs)
        for row in tx.own_holds():  # this id's holds: an earlier life's (recovered) or this one's (kept)
            adopt(self.core, row)
            if recover:
                ops.extend(self.core.settle(Settle(row["id"], None, Provenance.ESTIMATED, EndReason.RECOVERED), 0)[1])
                settled.append(row["id"])
        tx.write(ops)

    async def run(self, mailbox) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            await super().run(mailbox)

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(CONNECT_RETRY_S if not self.connected else self.heartbeat_s)
            if self.retired:
                return
            if not self.connected:
                try:
                    await self._connect()
                except LedgerWriteError as exc:
                    self.fault = str(exc)
                except LedgerFault as exc:
                    self.fault = exc.fault
                    log.error("usage ledger %s: %s", self.pg.path, exc)
                else:
                    log.warning("usage ledger %s is reachable: serving", self.pg.path)
                continue
            try:
                await self.sweep()
            except LedgerWriteError as exc:
                self._up_since = None
                log.warning("usage ledger %s: heartbeat failed (%s)", self.pg.path, exc)

    def _may_claim(self) -> bool:
        """Whether this instance has reached Postgres without a fault for a whole
        ``instance_ttl_s``: only then is another's old heartbeat its death, not an outage
        that kept every instance from heartbeating (they heartbeat again within the ttl)."""
        return self._up_since is not None and trio.current_time() - self._up_since >= self.instance_ttl_s

    async def sweep(self) -> int:
        """Heartbeat, then settle the holds of every instance whose heartbeat expired
        (claimed exactly once across survivors). Returns how many holds it settled."""
        async with self._step:
            settled: list[str] = []
            totals = dict(self.core.totals)
            claim = self._may_claim()
            known = set(self.core.holds) | set(self.core.settling) | set(self.backlog)
            forgotten: list[str] = []
            try:
                await self._thread(self.pg.transaction, partial(self._sweep_tx, claim, known, settled, forgotten))
            except BaseException:
                for request_id in settled + forgotten:  # rolled back: another sweep settles them
                    self.core.settled.pop(request_id, None)
                    self.core.settling.pop(request_id, None)
                self.core.totals = totals
                raise
            if self._up_since is None:
                self._up_since = trio.current_time()
            self.core.written(settled + forgotten)
            self.swept += len(settled)
            self.forgotten += len(forgotten)
            if settled or forgotten:
                self._signal()
            return len(settled)

    def _sweep_tx(self, claim: bool, known: set, settled: list, forgotten: list, tx: PgTransaction) -> None:
        if not tx.heartbeat():
            log.warning("this instance (%s) was taken for dead by another; its holds were settled there",
                        self.instance_id)
        self._forget_unknown(tx, known, forgotten)
        if not claim:
            return
        claimed = tx.claim_expired(self.instance_ttl_s)
        holds = tx.orphan_holds()
        if claimed:
            self.claimed.extend(claimed)
            log.warning("instances %s stopped heartbeating: settling their %d open holds as recovered",
                        ", ".join(claimed), len(holds))
        if not holds:
            return
        names = {row["key_name"] for row in holds}
        rows = tx.lock_keys(names, ())
        refresh(self.core, rows, {row["name"]: row["held"] for row in rows}, self.core.wall())
        ops = []
        for row in holds:
            adopt(self.core, row)
            ops.extend(self.core.settle(Settle(row["id"], None, Provenance.ESTIMATED, EndReason.RECOVERED), 0)[1])
            settled.append(row["id"])
        tx.write(ops)

    def _forget_unknown(self, tx: PgTransaction, known: set, forgotten: list) -> None:
        """This instance's reservations in Postgres that its core does not hold: a reserve
        whose commit went through though its answer was lost (the connection broke at the
        COMMIT), refused to its client and never served. Each is settled at no charge, so
        it neither holds the key's credit for the life of this process nor is charged as
        recovered at the next start."""
        unknown = [row for row in tx.own_holds() if row["id"] not in known]
        if not unknown:
            return
        log.warning("%d reservations of this instance were refused to their clients but written; "
                    "settled at no charge", len(unknown))
        rows = tx.lock_keys({row["key_name"] for row in unknown}, ())
        refresh(self.core, rows, {row["name"]: row["held"] for row in rows}, self.core.wall())
        ops = []
        for row in unknown:
            adopt(self.core, row)
            ops.extend(self.core.settle(Settle(row["id"], None, Provenance.ESTIMATED, EndReason.RECOVERED,
                                               no_work=True), 0)[1])
            forgotten.append(row["id"])
        tx.write(ops)

    async def wait_swept(self, n: int) -> None:
        """Return once this instance has settled ``n`` holds of expired instances."""
        while self.swept < n:
            await self._settled().wait()

    async def retire(self) -> None:
        """A graceful stop: this instance leaves the ledger once its settlements are in."""
        if not self.connected or self.retired:
            return
        async with self._step:
            self.retired = True
            try:
                left = await self._thread(self.pg.transaction, lambda tx: tx.remove_instance())
            except LedgerWriteError as exc:
                log.error("usage ledger %s: could not remove this instance (%s); another recovers its holds "
                          "once its heartbeat expires", self.pg.path, exc)
                return
            if left:
                log.warning("this instance leaves %d holds open; another instance settles them", left)

    async def _thread(self, fn, *args):
        began = time.perf_counter()
        try:
            with trio.CancelScope(shield=True):
                return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        finally:
            self.commit_times.observe(time.perf_counter() - began)

    # ------------------------------------------------------------ batches

    def _refused(self, exc: LedgerWriteError) -> None:
        super()._refused(exc)
        self._up_since = None

    def _publish_key_hashes(self) -> None:
        """Never a set: a key another instance just created must reach its reserve here."""
        self.key_hashes = None

    async def _process(self, batch: list[Envelope]) -> bool:
        async with self._step:
            if self.backlog or not self.connected:
                return await self._unwritable(batch)
            now = trio.current_time()
            admitted = []
            for envelope in batch:
                msg = envelope.msg
                refused = await self._admit(msg, now) if isinstance(msg, Reserve) else None
                if refused is not None:
                    self._answer(envelope, refused)
                else:
                    admitted.append(envelope)
            if not admitted:
                return False
            steps: list[Step] = []
            try:
                await self._thread(self.pg.transaction, partial(self._batch_tx, admitted, now, steps))
            except LedgerWriteError as exc:
                self._refused(exc)
                decided = {id(step.envelope) for step in steps}
                # refused before the core saw them: decided now, from memory, to be refused the same way
                steps.extend(self._step_of(envelope, now) for envelope in admitted if id(envelope) not in decided)
                return self._settle_refused(steps)
            except Exception as exc:  # a bug: every caller of the batch hears of the crash
                for envelope in admitted:
                    crash_reply(envelope, self.name, exc)
                raise
            self.commits += 1
            self.fault = None
            self.core.written(step.result.request_id for step in steps if isinstance(step.result, Settled))
            for step in steps:
                self._answer(step.envelope, step.result)
            self._signal()
            return False

    async def _admit(self, msg: Reserve, now: float) -> GatewayError | None:
        """A key's requests per minute, counted in the shared window (the one place).
        The limit is the key's as this process last read it."""
        state = self.core.by_hash.get(self.core.key_hash(msg.key)) if msg.key else None
        if state is None or state.requests_per_minute is None:
            return None
        window = state.requests_window_s
        retry = await self.windows.admit(f"key:{state.name}", state.requests_per_minute, window, now)
        if retry is None:
            return None
        err = state.rate_refusal(retry)
        err.key_name = state.name
        return err

    def _touched(self, envelopes: list[Envelope]) -> tuple[set[str], set[str], bool]:
        """The key names and hashes a batch reads or changes, and whether it lists them all."""
        names: set[str] = set()
        hashes: set[str] = set()
        everything = False
        for envelope in envelopes:
            match envelope.msg:
                case Reserve(key=key) | Authenticate(key=key) | AllowedModels(key=key):
                    if key:
                        hashes.add(self.core.key_hash(key))
                case Settle(request_id=request_id):
                    hold = self.core.holds.get(request_id)
                    if hold is not None:
                        names.add(hold.key_name)
                case CreateKey(name=name, key=key):
                    names.add(name)
                    if key:
                        hashes.add(hash_key(key))
                case UpdateKey(name=name) | RevokeKey(name=name):
                    names.add(name)
                case Reconfigure(key_specs=specs):
                    for spec in specs:
                        names.add(spec.name)
                        hashes.add(hash_key(spec.key.value))
                case Query(what="keys"):
                    everything = True
        return names, hashes, everything

    def _batch_tx(self, envelopes: list[Envelope], now: float, steps: list[Step], tx: PgTransaction) -> None:
        """In the worker thread, in one transaction: lock, refresh, decide, write.

        A batch of settlements alone reads nothing first: a settlement's charge follows
        from its hold (in memory since its reserve) and its usage, and its statement
        moves the key's spent and budget in Postgres itself, in the hold's period
        (``ledger_pg.SETTLE``), so no key state of another instance's making changes
        what it writes. Its writes lock the keys in name order, as ``lock_keys`` does.
        The core's own records of those keys may then lag the ledger until the next
        batch that reads them; every reserve, authentication and key query reads them
        under the lock before deciding. Nor does it mark this instance alive: it opens
        no hold that a sweeper could take for an orphan (a batch that does registers in
        its own transaction), and the heartbeats keep the mark."""
        steps.clear()
        settling_only = all(isinstance(envelope.msg, Settle) for envelope in envelopes)
        if not self.retired and not settling_only:
            tx.register()
        wall = self.core.wall()
        if not settling_only:
            names, hashes, everything = self._touched(envelopes)
            if everything:
                rows = tx.all_keys()
                refresh(self.core, rows, tx.held(row["name"] for row in rows), wall)
            rows = tx.lock_keys(names, hashes)
            refresh(self.core, rows, {row["name"]: row["held"] for row in rows}, wall)
        for envelope in envelopes:
            if isinstance(envelope.msg, Query) and envelope.msg.what == "all_reservations":
                steps.append(Step(envelope, self._everywhere(tx, wall), []))
            else:
                steps.append(self._step_of(envelope, now))
        ops = [op for step in steps for op in step.ops]
        if settling_only:
            ops.sort(key=lambda op: op[1]["key_name"])  # row locks in name order: no deadlock with lock_keys
        if ops:
            tx.write(ops)

    def _everywhere(self, tx: PgTransaction, wall: float) -> list[dict]:
        """The open reservations of every instance, as ``Query("reservations")`` lists
        this one's, each with the instance that holds it."""
        return [{**reservation_view(row["id"], row["key_name"], row["model"], row["hold_micro"], row["created_at"],
                                    "settling" if row["id"] in self.core.settling else "open", wall),
                 "instance": row["instance_id"]}
                for row in tx.open_holds(LISTED_HOLDS)]

    def _step_of(self, envelope: Envelope, now: float) -> Step:
        """The core's decision on one message: its answer, its writes, how to undo it."""
        undo = self._undo(envelope.msg, now)
        try:
            result, ops = self.core.handle(envelope.msg, now)
        except GatewayError as exc:
            return Step(envelope, exc, [])
        return Step(envelope, result, ops, undo)

    def _settle_refused(self, steps: list[Step]) -> bool:
        """The transaction was rolled back: park its settlements, undo and refuse the rest."""
        parked = False
        for step in reversed(steps):
            if not step.ops:
                continue
            if isinstance(step.result, Settled):
                self.backlog[step.result.request_id] = Unwritten(step.ops, step.result, [step.envelope])
                self._backlog_added.set()
                step.parked = parked = True
            else:
                if step.undo is not None:
                    step.undo()
                step.result = LedgerUnavailable(UNAVAILABLE, retry_after=1.0)
        for step in steps:
            if not step.parked:
                self._answer(step.envelope, step.result)
        self._signal()
        return parked

    async def _unwritable(self, batch: list[Envelope]) -> bool:
        """Postgres is known to refuse (settlements wait in the backlog) or was never
        reached: the core answers from what it has, and no write is tried."""
        if self.connected:
            return await super()._process(batch)
        for envelope in batch:
            if isinstance(envelope.msg, Query):
                try:
                    result: Any = self.core.query(envelope.msg.what)
                except GatewayError as exc:
                    result = exc
            else:
                result = LedgerUnavailable(UNAVAILABLE, retry_after=1.0)
            self._answer(envelope, result)
        return False

    def snapshot(self) -> dict:
        return {**super().snapshot(), "instance_id": self.instance_id, "connected": self.connected,
                "swept_holds": self.swept}


__all__ = ["SharedUsageActor"]
