"""The path of one request: the only code that talks to several actors.

::

    plan = ask(routing, Resolve)            404 for an unknown model
    hold = ask(usage, Reserve)              401/403/402 before any upstream call
    for target in plan, for credential in its pool (leases never repeat a credential):
        one attempt (gateway.attempt): open the upstream inside this request's scope
        failure before the first byte reached the client:
            ask(cooldown, Outcome) -> Decision; tell(credentials, Release + Decision); next
        success: stream (stall deadline per read), pass-through or translated
    ask(usage, Settle) exactly once, before the client gets the stream's last bytes,
    and (shielded) in ``finally`` for every other way out: cancel, timeout, error.

What the settlement says -- reason, provenance, what to charge and on what basis -- is
decided by ``gateway.ending.decide`` from the facts the request gathered.

The upstream stream lives in an ``async with`` inside the request's own nursery, so
a client disconnect (seen by a sibling task watching the connection) cancels it and
the upstream response is closed at once -- or, under the ``drain`` policy, read on
without forwarding for a bounded time to learn the exact usage.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from typing import Any, Callable, Mapping

import attrs
import trio

from actors.cooldown import Outcome as CooldownOutcome
from actors.credentials import Lease, Leased, NoneAvailable, Release
from actors.mailbox import Mailbox
from actors.routing import Plan, Resolve, Table
from actors.usage import Persist, Reserve, Settle
from gateway.attempt import AttemptRunner
from gateway.disconnect import Disconnect
from gateway.field_cache import FieldCache
from gateway.leasing import Leases
from gateway.ending import Charge, Outcome, Trouble, decide, estimates, hold_instead
from gateway.allowance import held_output_tokens
from gateway.observe import Observers, from_request
from gateway.request import Call, ClientLink, Request
from gateway.traffic import is_cancellation
from gateway.transform_trace import TracedLink, TransformTraces
from protocols.errors import (
    ClientError,
    GatewayError,
    GatewayFailure,
    LedgerUnavailable,
    NoCapacity,
    UpstreamBadRequest,
    UpstreamConnectionsBusy,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from protocols.server_tools import UnsupportedServerTool, refusal
from providers.seams import Provider
from protocols.usage import estimate_tokens
from providers.trace_hook import transform_trace

__all__ = ["Actors", "Call", "ClientLink", "Dispatcher"]

log = logging.getLogger("tollhouse.dispatch")


@attrs.frozen
class Actors:
    routing: Mailbox
    credentials: Mailbox
    cooldown: Mailbox
    usage: Mailbox
    store: Mailbox | None = None  # stored Responses; None when the store is disabled


class Dispatcher:
    def __init__(self, actors: Actors, providers: Mapping[str, Provider], streaming: Any,
                 default_hold_output_tokens: int, budget_s: float = 10.0,
                 stopping: Callable[[], bool] = lambda: False, observers: Observers | None = None,
                 table: Table | None = None, pricing: Mapping[str, Any] | None = None,
                 in_flight: Counter | None = None, traces: TransformTraces | None = None,
                 field_cache: FieldCache | None = None, leases: Leases | None = None) -> None:
        # One dispatcher per config generation (gateway/generation.py): a request runs on
        # the one it started on -- its routes (``table``), prices, providers, streaming
        # settings -- and a reload waits for ``wait_idle`` before closing what it retired.
        self.table = table
        self.pricing = pricing
        self.calls = 0  # running on this dispatcher (``wait_idle``)
        self._idle: trio.Event | None = None  # made by ``wait_idle``, set when the last call ends
        self.stopping = stopping
        self.observers = observers if observers is not None else Observers()
        self.budget_s = budget_s
        self.actors = actors
        self.leases = leases if leases is not None else Leases(actors.credentials)
        self.providers = providers
        self.streaming = streaming
        self.settle_timeout_s = streaming.settle_timeout_s
        self.default_hold_output_tokens = default_hold_output_tokens
        self.drains = trio.Semaphore(max(streaming.max_concurrent_drains, 1))
        self._prefix = "req_" + os.urandom(6).hex()  # unique per process: ids never repeat across restarts
        self._counter = itertools.count(1)
        self.drain_enabled = streaming.on_disconnect == "drain" and streaming.max_concurrent_drains > 0
        self.attempt = AttemptRunner(streaming, self._settle, stopping, field_cache, self._persist)
        # calls being served now, by (protocol, transport, stream), shared by every
        # generation's dispatcher: read by metrics scrapes
        self.in_flight: Counter = Counter() if in_flight is None else in_flight
        self.traces = traces  # transform traces: the requests they choose record every pass

    def next_id(self) -> str:
        """A request id, unique across restarts; every response carries it as ``x-request-id``."""
        return f"{self._prefix}{next(self._counter):010x}"

    # ------------------------------------------------------------ entry

    async def serve(self, call: Call, link: ClientLink) -> None:
        """Answer one call on ``link``; errors before the response started are raised.
        Its observers hear how it ended, once it is settled (or refused)."""
        req = Request(call)
        error: BaseException | None = None
        serving = (call.request.protocol, call.transport, call.request.stream)
        self.in_flight[serving] += 1
        self.calls += 1
        try:
            await self._serve(req, link)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.in_flight[serving] -= 1
            self.calls -= 1
            if not self.calls and self._idle is not None:
                self._idle.set()
                self._idle = None
            if self.observers:
                self.observers.tell(from_request(req, error, call.transport, self.observers.prompts))
            if req.transform is not None:
                try:
                    self.traces.finish(req, error)
                except Exception:  # a trace that cannot be written never fails its request
                    log.exception("request %s: its transform trace could not be written", req.id)

    async def wait_idle(self) -> None:
        """Return once no request runs on this dispatcher."""
        while self.calls:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()

    async def _serve(self, req: Request, link: ClientLink) -> None:
        call = req.call
        request = call.request
        plan = await self.actors.routing.ask(Resolve(request.model, self.table))
        out_tokens = held_output_tokens(plan, self.providers, request, self.default_hold_output_tokens)
        req.output_allowance = out_tokens
        try:
            reservation = await self.actors.usage.ask(Reserve(
                req.id, call.key, request.model, tuple(t.label for t in plan.targets),
                estimate_tokens(call.body_bytes), out_tokens, self.pricing, defer_write=True))
        except GatewayError as exc:
            req.key_name = exc.key_name  # a key recognised and refused (402, 429, 403) is named
            raise
        req.key_name = reservation.key_name
        if reservation.deferred:
            req.hold_unwritten = True
            if request.stream:  # written while the upstream is called; waited for before the first byte
                self.actors.usage.tell_nowait(Persist(req.id))
        reset = None
        if self.traces is not None and self.traces.enabled:
            req.transform = self.traces.choose(call, req.key_name)
            if req.transform is not None:
                reset = transform_trace.set(req.transform)  # the providers' passes reach it
                link = TracedLink(link, req.transform)
        try:
            disconnect = link.disconnect  # the server's hook (``gateway.disconnect``), when it has one
            if disconnect is not None:
                await self._run_told(disconnect, plan, link, req)
            else:
                await self._run_watched(plan, link, req)
        except GatewayError as exc:
            req.note(Trouble.TIMEOUT if isinstance(exc, UpstreamTimeout) else
                     Trouble.UPSTREAM if isinstance(exc, (UpstreamError, NoCapacity)) else
                     Trouble.CLIENT if isinstance(exc, ClientError) else Trouble.GATEWAY)
            raise
        except BaseException as exc:
            req.note(Trouble.CLIENT_GONE if req.client_gone else
                     Trouble.SHUTDOWN if self.stopping() and is_cancellation(exc) else Trouble.GATEWAY)
            raise
        finally:
            if reset is not None:
                transform_trace.reset(reset)
            if not req.settled:
                with trio.CancelScope(shield=True):
                    await self._settle(req)

    async def _run_told(self, disconnect: Disconnect, plan: Plan, link: ClientLink, req: Request) -> None:
        """The plan, cancelled when the server's hook says the client left (``_client_left``)."""
        with trio.CancelScope() as request_scope:
            told = _Told(self, link, req, request_scope)
            disconnect.watch(told.left)
            try:
                await self._run_plan(plan, link, req)
            finally:
                told.ended = True
                disconnect.unwatch(told.left)
                if told.draining:
                    self.drains.release()

    async def _run_watched(self, plan: Plan, link: ClientLink, req: Request) -> None:
        """The plan, beside a task waiting for the client to leave (a link without the hook)."""
        failure: GatewayError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, link, req, nursery.cancel_scope)
            try:
                await self._run_plan(plan, link, req)
            except GatewayError as exc:
                failure = exc  # raised below, outside the nursery, not in a group
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _watch_client(self, link: ClientLink, req: Request, request_scope: trio.CancelScope) -> None:
        await link.wait_disconnect()
        if self._client_left(link, req, request_scope):
            try:
                await trio.sleep_forever()  # the request's end cancels this watcher
            finally:
                self.drains.release()

    def _client_left(self, link: ClientLink, req: Request, request_scope: trio.CancelScope) -> bool:
        """The client went away: the request is cancelled, or, for a stream that may
        drain (``on_disconnect: drain`` and a drain slot free), its deadline becomes the
        drain's. True when it drains (the caller gives the slot back at the request's end)."""
        if link.ended:
            return False  # the response was complete: a disconnect now cancels nothing
        req.client_gone = True
        req.note(Trouble.CLIENT_GONE)
        scope = req.streaming_scope
        if self.drain_enabled and scope is not None and req.started and not req.meter.finished:
            try:
                self.drains.acquire_nowait()
            except trio.WouldBlock:
                request_scope.cancel()
                return False
            req.drain_deadline = trio.current_time() + self.streaming.drain_timeout_s
            scope.deadline = min(scope.deadline, req.drain_deadline)
            return True
        request_scope.cancel()
        return False

    async def _persist(self, req: Request) -> None:
        """A deferred hold on disk before the client's first byte: a crash then loses at
        most a request whose client received nothing. ``LedgerUnavailable`` if it
        cannot be written (the request then ends before its answer began)."""
        if req.hold_unwritten:
            try:
                await self.actors.usage.ask(Persist(req.id), timeout=self.settle_timeout_s)
            except trio.TooSlowError:
                raise LedgerUnavailable("The gateway's usage ledger cannot be written right now; retry later.",
                                        retry_after=1.0) from None
            req.hold_unwritten = False

    async def _settle(self, req: Request) -> None:
        """Settle once, as ``decide`` says; a ledger that cannot keep up is waited for at
        most ``settle_timeout_s`` (the meter keeps retrying the write on its own). Never
        raises: a settlement that could not be handed to the meter leaves ``settled``
        unset, and the request's ``finally`` tries once more."""
        facts = req.facts()
        try:
            if estimates(facts):  # counting tokens may load the tokenizer: not on the event loop
                ending = await trio.to_thread.run_sync(decide, facts)
            else:
                ending = decide(facts)
        except Exception:
            log.exception("request %s: its charge could not be estimated; charging its hold", req.id)
            ending = hold_instead(facts)
        billed = req.billed_attempt()
        msg = Settle(req.id, ending.usage if ending.charge is Charge.USAGE else None, ending.provenance,
                     ending.reason, billed.provider if billed else None, billed.model if billed else None,
                     billed.credential if billed else None, no_work=ending.charge is Charge.NOTHING,
                     basis=ending.basis, unanswered=ending.unanswered)
        req.ending = ending
        with trio.move_on_after(self.settle_timeout_s, shield=True) as scope:
            try:
                req.charged = await self.actors.usage.ask(msg, timeout=self.settle_timeout_s)
            except trio.TooSlowError:
                scope.cancel()
            except LedgerUnavailable as exc:
                if req.hold_unwritten:  # booked whole or not at all: not, and its client has seen nothing
                    req.settled, req.unbooked = True, exc
                    return
                log.error("settlement of %s failed (%s: %s)", req.id, type(exc).__name__, exc)
                return
            except Exception as exc:  # the meter crashed on it: it restarts from the ledger
                log.error("settlement of %s failed (%s: %s)", req.id, type(exc).__name__, exc)
                return
        req.settled = True
        req.hold_unwritten = False
        if scope.cancelled_caught:
            log.warning("settlement of %s not yet on disk after %.1f s; the meter keeps it pending",
                        req.id, self.settle_timeout_s)

    # ------------------------------------------------------------ failover

    async def _run_plan(self, plan: Plan, link: ClientLink, req: Request) -> None:
        """Try the plan's targets in order, each credential at most once per pass.

        When nothing is usable but something frees up within the request's budget, wait
        for it and make another pass; otherwise fail fast with ``Retry-After``.
        """
        deadline = trio.current_time() + self.budget_s
        last_error: GatewayError | None = None
        while True:
            done, soonest, last_error = await self._one_pass(plan, link, req, last_error)
            if done:
                return
            now = trio.current_time()
            if soonest is None or soonest > deadline:
                break
            await trio.sleep_until(soonest)
        if last_error is not None and (soonest is None or not isinstance(last_error, RETRY_LATER)):
            raise last_error
        wait = None if soonest is None else max(1.0, soonest - now)
        raise NoCapacity("Every upstream for this model is cooling down or busy; retry later.",
                         retry_after=wait, status=429 if wait is not None else 503)

    async def _one_pass(self, plan: Plan, link: ClientLink, req: Request, last_error: GatewayError | None
                        ) -> tuple[bool, float | None, GatewayError | None]:
        """One walk over the plan: (served, soonest time a credential frees up, last error)."""
        soonest: float | None = None
        refused: UnsupportedServerTool | None = None
        body_tokens = estimate_tokens(req.call.body_bytes)
        request = req.call.request
        for target in plan.targets:
            provider = self.providers[target.provider]
            if request.server_tools:
                # a server tool this target's family cannot run (and its operator does not
                # drop): skipped before any lease; the next target may have it
                cannot = refusal(request, provider.protocol, getattr(provider, "server_tools", {}))
                if cannot is not None:
                    refused = refused or cannot
                    continue
            tried: set[str] = set()
            while True:
                lease = await self.leases.lease(Lease(target.provider, target.model, frozenset(tried), body_tokens))
                if isinstance(lease, NoneAvailable):
                    if lease.until is not None:
                        soonest = lease.until if soonest is None else min(soonest, lease.until)
                    break
                tried.add(lease.credential.id)
                error: UpstreamError | None = None
                served = False
                try:
                    await self.attempt.run(req, provider, target, lease.credential, link)
                    error = req.meter.error if isinstance(req.meter.error, UpstreamError) else None
                    served = True
                except UnsupportedServerTool as exc:
                    # the build refused a server tool ``refusal`` did not foresee: nothing was sent
                    refused = refused or exc
                    break
                except UpstreamError as exc:
                    # A deadline that passed while the request waited for a connection slot,
                    # or the slots all busy (the gateway's own max_connections), says nothing
                    # about the upstream: no cooldown for it; the next target may have room.
                    unsent_wait = isinstance(exc, UpstreamConnectionsBusy) or (
                        isinstance(exc, UpstreamTimeout) and req.attempts[-1].outcome is Outcome.NOT_SENT)
                    error = None if unsent_wait else exc
                    if req.started:
                        raise GatewayFailure("upstream failed after the response began") from exc
                    if isinstance(exc, UpstreamBadRequest) or req.attempts[-1].outcome is Outcome.ANSWERED:
                        raise  # the upstream's verdict on the request itself, or an answer: no retry
                    last_error = exc
                finally:
                    if not (error is None and self._released_at_once(target, lease, req, served)):
                        with trio.move_on_after(self.settle_timeout_s, shield=True):
                            await self._release(target, lease, error, req, served)
                if served:
                    return True, None, None
        if refused is not None and last_error is None and soonest is None:
            raise refused  # no target could take the request as the client wrote it
        return False, soonest, last_error

    def _released_at_once(self, target: Any, lease: Leased, req: Request, served: bool) -> bool:
        """An attempt without an upstream error gives its lease back without waiting when
        the actors take the notices at once (the usual case): no shielded scope for a
        release that cannot be cancelled. False, the lease still held, when one would
        wait (the cooldown's success notice, if it went, is harmless to send again)."""
        if served and req.trouble is None and not self.actors.cooldown.tell_nowait(
                CooldownOutcome(target.provider, target.model, lease.credential.id, None)):
            return False
        usage = req.meter.usage
        tokens = usage.output + usage.reasoning if usage else 0
        return self.leases.release_at_once(lease, Release(lease.lease_id, tokens))

    async def _release(self, target: Any, lease: Leased, error: UpstreamError | None, req: Request,
                       served: bool) -> None:
        """Give the lease back; the cooldown hears of a success only from an attempt
        that served its answer without trouble, and of every upstream error."""
        outcome = CooldownOutcome(target.provider, target.model, lease.credential.id, error)
        if error is None:
            if served and req.trouble is None:
                await self.actors.cooldown.tell(outcome)
            usage = req.meter.usage
            await self.leases.release(lease, Release(lease.lease_id, usage.output + usage.reasoning if usage else 0))
            return
        try:
            decision = await self.actors.cooldown.ask(outcome)
        except BaseException:  # no verdict (its deadline, the release's own bound): the lease still goes back
            self.leases.release_nowait(lease, Release(lease.lease_id))
            raise
        await self.leases.release(lease, Release(
            lease.lease_id, cool_until=decision.until, cool_model=target.model if decision.scope == "model" else None,
            dead=decision.dead, reason=decision.kind))


@attrs.define
class _Told:
    """A request's side of the server's disconnect hook. The hook fires inside the
    server's reading task; the verdict (``Dispatcher._client_left``) comes a scheduler
    turn later, from a task started then, as a task waiting on ``receive`` would have
    had it: what the request's task was about to do with what it had already read from
    the upstream (meter and forward it), it does first."""

    dispatcher: Dispatcher
    link: ClientLink
    req: Request
    scope: trio.CancelScope
    ended: bool = False  # the request's plan is over: a late verdict changes nothing
    draining: bool = False  # the verdict took a drain slot, given back at the end

    def left(self) -> None:
        trio.lowlevel.spawn_system_task(self._decide, name="tollhouse client left")

    async def _decide(self) -> None:
        if not self.ended and self.dispatcher._client_left(self.link, self.req, self.scope):
            self.draining = True


# Errors that mean "this upstream is resting": when every target is resting, the client
# is told when to come back rather than shown one upstream's error.
RETRY_LATER = (UpstreamRateLimited, UpstreamOverloaded, UpstreamQuotaExhausted)
