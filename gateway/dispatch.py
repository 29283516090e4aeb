"""The path of one request: the only code that talks to several actors.

::

    plan = ask(routing, Resolve)            404 for an unknown model
    hold = ask(usage, Reserve)              401/403/402 before any upstream call
    for target in plan, for credential in its pool (leases never repeat a credential):
        open the upstream inside this request's scope (ttfb deadline)
        failure before the first byte reached the client:
            ask(cooldown, Outcome) -> Decision; tell(credentials, Release + Decision); next
        success: stream (stall deadline per read), pass-through or translated
    ask(usage, Settle) exactly once, before the client gets the stream's last bytes,
    and (shielded) in ``finally`` for every other way out: cancel, timeout, error.

The upstream stream lives in an ``async with`` inside the request's own nursery, so
a client disconnect (seen by a sibling task watching the connection) cancels it and
the upstream response is closed at once -- or, under the ``drain`` policy, read on
without forwarding for a bounded time to learn the exact usage.
"""

from __future__ import annotations

import json
import logging
import itertools
import os
from typing import Any, Mapping, Protocol

import attrs
import trio

from actors.cooldown import Outcome
from actors.credentials import Lease, Leased, NoneAvailable, Release
from actors.mailbox import Mailbox
from actors.routing import Plan, Resolve
from actors.usage import Reserve, Settle
from gateway.meter import Meter
from protocols.errors import (
    GatewayError,
    GatewayFailure,
    NoCapacity,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from protocols.unified import EndReason, ErrorEvent, Finish, UnifiedRequest
from protocols.usage import estimate_tokens

log = logging.getLogger("tollhouse.dispatch")
SETTLE_TIMEOUT = 10.0
AFTER_ERROR_GRACE_S = 1.0


class ClientLink(Protocol):
    """The client's side of one HTTP exchange, as the dispatcher sees it."""

    async def start(self, status: int, headers: list) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, data: bytes = b"") -> None: ...
    async def wait_disconnect(self) -> None: ...

    @property
    def ended(self) -> bool: ...


@attrs.frozen
class Call:
    """One parsed client request, ready to dispatch."""

    request: UnifiedRequest
    key: str
    client: Any  # the client protocol's module: format_response, format_error, StreamEncoder
    body_bytes: int


@attrs.frozen
class Actors:
    routing: Mailbox
    credentials: Mailbox
    cooldown: Mailbox
    usage: Mailbox


@attrs.define
class RequestState:
    """Mutable facts about one request, shared by its stream and its disconnect watcher."""

    id: str
    meter: Meter = attrs.field(factory=Meter)
    started: bool = False
    client_gone: bool = False
    streaming_scope: trio.CancelScope | None = None
    reason: EndReason | None = None
    target: Any = None
    credential: str | None = None
    settled: bool = False
    draining: bool = False
    upstream_worked: bool = False  # some upstream accepted the call (or may have: a timeout)


class Dispatcher:
    def __init__(self, actors: Actors, providers: Mapping[str, Any], streaming: Any,
                 default_hold_output_tokens: int, budget_s: float = 10.0) -> None:
        self.budget_s = budget_s
        self.actors = actors
        self.providers = providers
        self.streaming = streaming
        self.default_hold_output_tokens = default_hold_output_tokens
        self.drains = trio.Semaphore(max(streaming.max_concurrent_drains, 1))
        self._prefix = "req_" + os.urandom(6).hex()  # unique per process: ids never repeat across restarts
        self._counter = itertools.count(1)
        self.drain_enabled = streaming.on_disconnect == "drain" and streaming.max_concurrent_drains > 0

    # ------------------------------------------------------------ entry

    async def serve(self, call: Call, link: ClientLink) -> None:
        """Answer one call on ``link``; errors before the response started are raised."""
        state = RequestState(id=self._next_id())
        req = call.request
        plan = await self.actors.routing.ask(Resolve(req.model))
        hold_tokens = plan.hold_output_tokens or self.default_hold_output_tokens
        out_tokens = min(req.max_tokens, hold_tokens) if req.max_tokens else hold_tokens
        await self.actors.usage.ask(Reserve(
            state.id, call.key, req.model, tuple(t.label for t in plan.targets),
            estimate_tokens(call.body_bytes), out_tokens))
        try:
            failure: GatewayError | _Done | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client, link, state, nursery.cancel_scope)
                try:
                    await self._run_plan(call, plan, link, state)
                except _Done:
                    pass
                except GatewayError as exc:
                    failure = exc  # raised below, outside the nursery, not in a group
                finally:
                    nursery.cancel_scope.cancel()
            if failure is not None:
                raise failure
            if state.client_gone and state.reason is None:
                state.reason = EndReason.CLIENT_CANCEL
        except GatewayError as exc:
            if state.reason is None:
                state.reason = EndReason.TIMEOUT if isinstance(exc, UpstreamTimeout) else EndReason.UPSTREAM_ERROR
            raise
        except BaseException:
            if state.reason is None:
                state.reason = EndReason.CLIENT_CANCEL if state.client_gone else EndReason.GATEWAY_ERROR
            raise
        finally:
            if not state.settled:
                with trio.move_on_after(SETTLE_TIMEOUT, shield=True):
                    await self._settle(state, complete=False)

    def _next_id(self) -> str:
        return f"{self._prefix}{next(self._counter):010x}"

    async def _watch_client(self, link: ClientLink, state: RequestState, request_scope: trio.CancelScope) -> None:
        await link.wait_disconnect()
        if link.ended:
            return  # the response was complete: a disconnect now cancels nothing
        state.client_gone = True
        if state.reason is None:
            state.reason = EndReason.CLIENT_CANCEL
        scope = state.streaming_scope
        if self.drain_enabled and scope is not None and state.started and not state.meter.finished:
            try:
                self.drains.acquire_nowait()
            except trio.WouldBlock:
                request_scope.cancel()
                return
            state.draining = True
            scope.deadline = min(scope.deadline, trio.current_time() + self.streaming.drain_timeout_s)
            return
        request_scope.cancel()

    async def _settle(self, state: RequestState, complete: bool) -> None:
        usage, provenance = state.meter.result(complete)
        target = state.target
        await self.actors.usage.ask(Settle(
            state.id, usage, provenance, state.reason or EndReason.END,
            target.provider if target else None, target.model if target else None, state.credential,
            no_work=usage is None and not state.upstream_worked))
        state.settled = True

    # ------------------------------------------------------------ failover

    async def _run_plan(self, call: Call, plan: Plan, link: ClientLink, state: RequestState) -> None:
        """Try the plan's targets in order, each credential at most once per pass.

        When nothing is usable but something frees up within the request's budget, wait
        for it and make another pass; otherwise fail fast with ``Retry-After``.
        """
        deadline = trio.current_time() + self.budget_s
        last_error: GatewayError | None = None
        while True:
            soonest, last_error = await self._one_pass(call, plan, link, state, last_error)
            now = trio.current_time()
            if soonest is None or soonest > deadline:
                break
            await trio.sleep_until(soonest)
        if last_error is not None and (soonest is None or not isinstance(last_error, RETRY_LATER)):
            raise last_error
        wait = None if soonest is None else max(1.0, soonest - now)
        raise NoCapacity("Every upstream for this model is cooling down or busy; retry later.",
                         retry_after=wait, status=429 if wait is not None else 503)

    async def _one_pass(self, call: Call, plan: Plan, link: ClientLink, state: RequestState,
                        last_error: GatewayError | None) -> tuple[float | None, GatewayError | None]:
        """One walk over the plan; returns (soonest time a credential frees up, last error)."""
        soonest: float | None = None
        for target in plan.targets:
            provider = self.providers[target.provider]
            tried: set[str] = set()
            while True:
                lease = await self.actors.credentials.ask(
                    Lease(target.provider, target.model, frozenset(tried), estimate_tokens(call.body_bytes)))
                if isinstance(lease, NoneAvailable):
                    if lease.until is not None:
                        soonest = lease.until if soonest is None else min(soonest, lease.until)
                    break
                tried.add(lease.credential.id)
                state.target, state.credential = target, lease.credential.id
                try:
                    await self._attempt(call, provider, target, lease, link, state)
                    raise _Done()
                except UpstreamError as exc:
                    if state.started:
                        raise GatewayFailure("upstream failed after the response began") from exc
                    last_error = exc
                    if isinstance(exc, UpstreamBadRequest):
                        raise
        return soonest, last_error

    async def _attempt(self, call: Call, provider: Any, target: Any, lease: Leased, link: ClientLink,
                       state: RequestState) -> None:
        """One upstream call on one credential; releases the lease whatever happens."""
        error: UpstreamError | None = None
        try:
            if call.request.stream:
                await self._stream(call, provider, target, lease, link, state)
            else:
                await self._complete(call, provider, target, lease, link, state)
            error = state.meter.error if isinstance(state.meter.error, UpstreamError) else None
        except UpstreamError as exc:
            error = exc
            raise
        finally:
            # Only an outright refusal (an error status, no connection) proves the upstream
            # did no work; a success, a timeout or a cancel may all have cost something.
            if error is None or isinstance(error, UpstreamTimeout) or state.started:
                state.upstream_worked = True
            with trio.move_on_after(SETTLE_TIMEOUT, shield=True):
                await self._release(target, lease, error, state)

    async def _release(self, target: Any, lease: Leased, error: UpstreamError | None, state: RequestState) -> None:
        outcome = Outcome(target.provider, target.model, lease.credential.id, error)
        if error is None:
            if state.reason in (None, EndReason.END):
                await self.actors.cooldown.tell(outcome)
            usage = state.meter.usage
            await self.actors.credentials.tell(Release(lease.lease_id, usage.output + usage.reasoning if usage else 0))
            return
        decision = await self.actors.cooldown.ask(outcome)
        await self.actors.credentials.tell(Release(
            lease.lease_id, cool_until=decision.until, cool_model=target.model if decision.scope == "model" else None,
            dead=decision.dead, reason=decision.kind))

    # ------------------------------------------------------------ one call

    async def _complete(self, call: Call, provider: Any, target: Any, lease: Leased, link: ClientLink,
                        state: RequestState) -> None:
        req = call.request
        with trio.move_on_after(self.streaming.nonstream_timeout_s) as scope:
            completion = await provider.complete(req, target.model, lease.credential)
        if scope.cancelled_caught:
            state.reason = EndReason.TIMEOUT
            raise UpstreamTimeout("The upstream did not answer before the request deadline.")
        response = completion.response
        state.upstream_worked = True
        state.meter.usage = response.usage
        state.meter.finished = True
        if req.protocol == provider.protocol:
            body, content_type = completion.body, completion.content_type
        else:
            body = json.dumps(call.client.format_response(response, req.model)).encode()
            content_type = "application/json"
        state.reason = EndReason.END
        await self._settle(state, complete=True)
        state.started = True
        await link.start(200, [*_headers(state, content_type, target), (b"content-length", b"%d" % len(body))])
        await link.end(body)

    async def _stream(self, call: Call, provider: Any, target: Any, lease: Leased, link: ClientLink,
                      state: RequestState) -> None:
        req = call.request
        passthrough = req.protocol == provider.protocol
        encoder = call.client.StreamEncoder(req, req.model)
        meter = state.meter
        held: list[bytes] = []
        streaming = self.streaming
        try:
            with trio.CancelScope(deadline=trio.current_time() + streaming.ttfb_timeout_s) as scope:
                state.streaming_scope = scope
                async with provider.stream(req, target.model, lease.credential) as reader:
                    batch = await reader.next_batch()
                    if batch is None:
                        raise UpstreamProtocolError("The upstream closed the stream without sending anything.")
                    first_error = _only_error(batch)
                    if first_error is not None:
                        raise first_error
                    content_type = reader.content_type if passthrough else encoder.content_type
                    state.upstream_worked = state.started = True
                    await link.start(200, _headers(state, content_type, target))
                    try:
                        await self._relay(batch, reader, scope, link, state, encoder, passthrough, held)
                    except UpstreamError as exc:
                        if meter.error is None:
                            meter.error = exc
                            held.append(encoder.error(exc))
        finally:
            state.streaming_scope = None
            if state.draining:
                state.draining = False
                self.drains.release()
        if scope.cancelled_caught and not state.client_gone and meter.error is None:
            if not state.started:
                raise UpstreamTimeout("The upstream sent nothing before the time-to-first-byte deadline.")
            state.reason = EndReason.TIMEOUT
            exc = UpstreamTimeout("The upstream stream stalled past its deadline.")
            meter.error = exc
            held.append(encoder.error(exc))
        complete = meter.finished and meter.error is None and not state.client_gone
        if state.reason is None:
            state.reason = EndReason.END if complete else (
                EndReason.UPSTREAM_ERROR if meter.error is not None else EndReason.GATEWAY_ERROR)
        await self._settle(state, complete=complete)
        if state.client_gone:
            return
        if not passthrough:
            held.append(encoder.close())
        await link.end(b"".join(held))

    async def _relay(self, batch: list, reader: Any, scope: trio.CancelScope, link: ClientLink,
                     state: RequestState, encoder: Any, passthrough: bool, held: list[bytes]) -> None:
        """Forward batches until the upstream ends (or, translated, until its error).

        Each read's frames leave in one write. From the finish (or an error) on, bytes are
        held back: they go out after the settlement is on disk.
        """
        meter = state.meter
        stall = self.streaming.stall_timeout_s
        errored = False
        while batch is not None:
            if not errored and not state.draining:
                scope.deadline = trio.current_time() + stall
            out = []
            for frame in batch:
                meter.observe(frame.events)
                if passthrough:
                    chunk = b"" if frame.drop else frame.raw
                    if not frame.events:
                        meter.opaque_frames += 1
                else:
                    chunk = encoder.encode(frame.events)
                if meter.finished or meter.error is not None:
                    held.append(chunk)
                elif chunk:
                    out.append(chunk)
            if out and not state.client_gone:
                await link.write(b"".join(out))
            if meter.error is not None and not errored:
                if not passthrough:
                    return
                # The upstream's own closing events (Responses' response.failed after
                # error) follow the error: forward them, briefly.
                errored = True
                scope.deadline = trio.current_time() + AFTER_ERROR_GRACE_S
            batch = await reader.next_batch()

class _Done(Exception):
    """An attempt succeeded: leave the failover loops."""


# Errors that mean "this upstream is resting": when every target is resting, the client
# is told when to come back rather than shown one upstream's error.
RETRY_LATER = (UpstreamRateLimited, UpstreamOverloaded, UpstreamQuotaExhausted)


def _only_error(batch: list) -> UpstreamError | None:
    """An upstream whose first event is an error has sent nothing worth keeping:
    treat it like an error status, so the request can still fail over."""
    for frame in batch:
        for ev in frame.events:
            if isinstance(ev, ErrorEvent):
                return ev.error if isinstance(ev.error, UpstreamError) else UpstreamError(ev.error.message)
            if not isinstance(ev, Finish):
                return None
    return None


def _headers(state: RequestState, content_type: str, target: Any) -> list:
    headers = [
        (b"content-type", content_type.encode()),
        (b"x-request-id", state.id.encode()),
        (b"x-tollhouse-target", target.label.encode()),
    ]
    if content_type.startswith("text/event-stream"):
        headers.append((b"cache-control", b"no-cache"))
    return headers
