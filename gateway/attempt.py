"""One upstream attempt: a call on one leased credential, whole or streamed.

An attempt records what it came to on the request (``Outcome``) and raises an
``UpstreamError`` when the failover loop may try elsewhere -- only while nothing has
reached the client. Once the client's response began, every failure ends the client's
stream with its protocol's error event (continuing the upstream's own response id and
sequence numbers on a pass-through), and nothing is retried.

Deadlines: the first byte within ``ttfb_timeout_s``; then each upstream read within
``stall_timeout_s``. A client that leaves under the ``drain`` policy is not cut: the
upstream is read on, unforwarded, until it ends or ``drain_timeout_s`` passes (a
drained upstream that goes silent for ``stall_timeout_s`` still ends it), so the exact
usage is learned.
"""

from __future__ import annotations

import json
import math
from typing import Any, Awaitable, Callable

import trio

from gateway.ending import Outcome, Trouble
from gateway.field_cache import FieldCache, Scope, conversation_of, user_turn_of
from gateway.field_rules import Tap, inject
from gateway.request import ClientLink, Request
from protocols.errors import (GatewayError, LedgerUnavailable, Stopping, UpstreamError, UpstreamProtocolError,
                              UpstreamTimeout)
from protocols.seams import StreamEncoder
from protocols.server_tools import drop_tools
from protocols.unified import ErrorEvent, Finish, StreamStart, UnifiedRequest
from providers.adapters import chain_of, passes_through
from providers.base import Frame, Unparseable
from providers.http11 import WriteWatch
from providers.seams import Provider, UpstreamStream

AFTER_ERROR_GRACE_S = 1.0
FINISH_TAIL_S = 2.0  # after the finish, how long an upstream without a closing event may take to end its body


class ClientStuck(Exception):
    """The client stopped reading for longer than ``client_write_timeout_s``."""


def outcome_of(exc: BaseException, written: bool) -> Outcome:
    """What a failed attempt came to, from the error that ended it and whether the
    transport had begun writing the request (``WriteWatch``)."""
    if isinstance(exc, Unparseable):
        return Outcome.ANSWERED
    if not written or (isinstance(exc, UpstreamError) and not exc.request_sent):
        return Outcome.NOT_SENT  # a deadline or cancel while waiting for a connection included
    if isinstance(exc, UpstreamError) and exc.upstream_status is not None:
        return Outcome.REFUSED
    return Outcome.UNANSWERED  # written: the upstream may be working, whatever ended the wait


def _for_upstream(request: UnifiedRequest, provider: Provider) -> UnifiedRequest:
    """The request as this provider is sent it: without the server tools it cannot run
    that its operator chose to drop (the others are refused by name when it is built)."""
    return drop_tools(request, provider.protocol, getattr(provider, "server_tools", {}))


def _edits(tap: Tap | None, chain: Any) -> Callable[[tuple], tuple] | None:
    """What changes a translated stream's events before the client's encoder: the
    field cache's tap, then the target's answer adapters."""
    adapters = chain.events if chain.edits_answers else None
    if tap is None:
        return adapters
    if adapters is None:
        return tap.events
    return lambda events: adapters(tap.events(events))


def _headers(req: Request, content_type: str, target: Any) -> list:
    headers = [
        (b"content-type", content_type.encode()),
        (b"x-request-id", req.id.encode()),
        (b"x-tollhouse-target", target.label.encode()),
    ]
    if content_type.startswith("text/event-stream"):
        headers.append((b"cache-control", b"no-cache"))
    return headers


def _unread(frame: Any) -> bool:
    return any(isinstance(ev, ErrorEvent) and not ev.from_upstream for ev in frame.events)


def _json_object(body: bytes) -> dict | None:
    """A whole answer's body as an object, when it is one (for its recorder)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _decoded(req: Request, frame: Any) -> tuple:
    """A pass-through frame's unified events, for its trace: those forwarded undecoded
    (light decoding) decoded now."""
    if frame.events or frame.payload is None or req.redecode is None:
        return frame.events
    return tuple(req.redecode([frame.payload]))


def _only_error(batch: list) -> UpstreamError | None:
    """An upstream whose first event is an error has sent nothing worth keeping:
    treat it like an error status, so the request can still fail over."""
    for frame in batch:
        if not frame.events and frame.payload:
            return None  # forwarded undecoded (light pass-through): it may have been content
        for ev in frame.events:
            if isinstance(ev, ErrorEvent):
                return ev.error if isinstance(ev.error, UpstreamError) else UpstreamError(ev.error.message)
            if not isinstance(ev, (Finish, StreamStart)):
                return None
    return None


class AttemptRunner:
    def __init__(self, streaming: Any, settle: Callable[[Request], Awaitable[None]],
                 stopping: Callable[[], bool] = lambda: False, field_cache: FieldCache | None = None,
                 persist: Callable[[Request], Awaitable[None]] | None = None) -> None:
        self.streaming = streaming
        self.settle = settle
        # makes the request's hold durable before the client's first byte (a whole
        # answer needs none: its settlement, written before it, books it)
        self.persist = persist
        self.stopping = stopping
        self.field_cache = field_cache

    def _scope(self, req: Request) -> Scope | None:
        """The request's conversation scope, hashed once for all its attempts."""
        if self.field_cache is None or req.key_name is None:
            return None
        if req.field_scope is None:
            req.field_scope = Scope(req.key_name, conversation_of(req.call.request, req.call.session))
        return req.field_scope

    def _injects(self, req: Request, provider: Any) -> Scope | None:
        """The conversation whose kept fields may go back into this request for
        ``provider``, or None where the field cache has nothing to put back."""
        request = req.call.request
        cache = self.field_cache
        if cache is not None and cache.rules.by_protocol and (
                provider.protocol in ("anthropic", "gemini") and any(m.role == "assistant" for m in request.messages)
                or provider.protocol in ("openai_responses", "openai_chat")
                and cache.rules.injects(provider.protocol, request.protocol)):
            return self._scope(req)
        return None

    def _for_upstream(self, req: Request, provider: Any) -> Any:
        """The request as ``provider`` is sent it: the field cache's kept fields put back
        (``gateway.field_rules``), the server tools its operator drops taken out."""
        request = req.call.request
        scope = self._injects(req, provider)
        if scope is not None and self.field_cache is not None:
            request = inject(request, provider.protocol, self.field_cache, scope, trio.current_time())
        return _for_upstream(request, provider)

    def _tap(self, req: Request, provider: Any) -> Tap | None:
        """The field cache's hand on a translated answer (the cache enabled)."""
        cache = self.field_cache
        if cache is None or provider.protocol == req.call.request.protocol or not cache.rules.by_protocol:
            return None
        scope = self._scope(req)
        return None if scope is None else Tap(cache, provider.protocol, scope, trio.current_time(),
                                              user_turn_of(req.call.request))

    async def run(self, req: Request, provider: Provider, target: Any, credential: Any, link: ClientLink) -> None:
        index = req.begin_attempt(target, credential.id)
        if req.transform is not None:
            req.transform.begin_attempt(index, target.label, credential.id)
        with req.call.trace.attempt(req, index, provider), WriteWatch.open() as watch:
            try:
                if self.field_cache is not None and self.field_cache.store.shared:
                    scope = self._injects(req, provider)  # what other instances kept for it comes in first
                    if scope is not None:
                        await self.field_cache.store.load(scope, trio.current_time())
                if req.call.request.stream:
                    await self._stream(req, provider, target, credential, link, index)
                else:
                    await self._complete(req, provider, target, credential, link, index)
            except BaseException as exc:
                if req.attempts[index].outcome is Outcome.UNANSWERED:
                    req.settle_attempt(index, outcome_of(exc, watch.written))
                raise

    # ------------------------------------------------------------ whole answers

    async def _complete(self, req: Request, provider: Provider, target: Any, credential: Any, link: ClientLink,
                        index: int) -> None:
        call = req.call
        with trio.move_on_after(self.streaming.nonstream_timeout_s) as scope:
            try:
                completion = await provider.complete(self._for_upstream(req, provider), target.model,
                                                     credential)
            except Unparseable as exc:
                req.settle_attempt(index, Outcome.ANSWERED)
                req.unparseable_bytes = exc.body_bytes
                req.note(Trouble.UPSTREAM)
                raise
        if scope.cancelled_caught:
            raise UpstreamTimeout("The upstream did not answer before the request deadline.")
        req.settle_attempt(index, Outcome.ANSWERED)
        response = completion.response
        meter = req.meter
        meter.usage, meter.finished, meter.final_usage = response.usage, True, True
        req.terminal = True
        answer = None
        if passes_through(provider, call.request, target.model):
            body, content_type = completion.body, completion.content_type
            if call.recorder is not None:
                answer = _json_object(body)
            if req.transform is not None:
                req.transform.answer(response)
        else:
            tap = self._tap(req, provider)
            if tap is not None:
                response = tap.response(response)
            # the answer adapters edit what the client sees; the meter took the upstream's usage above
            response = chain_of(provider, target.model).response(response)
            if req.transform is not None:
                req.transform.answer(response)
            answer = call.client.format_response(response, call.request.model, request=call.request)
            body = json.dumps(answer).encode()
            content_type = "application/json"
        await self.settle(req)
        if req.unbooked is not None:
            raise req.unbooked
        if req.hold_unwritten:  # the meter failed on its settlement (and restarts): nothing is booked
            raise LedgerUnavailable("The gateway's usage ledger could not book this request; its answer is "
                                    "withheld. Retry later.", retry_after=1.0)
        if call.recorder is not None and answer is not None:
            call.recorder.record(req, answer)
        req.started = True
        req.first_byte_at = trio.current_time()
        await link.start(200, [*_headers(req, content_type, target), (b"content-length", b"%d" % len(body))])
        await link.end(body)

    # ------------------------------------------------------------ streams

    async def _stream(self, req: Request, provider: Provider, target: Any, credential: Any, link: ClientLink,
                      index: int) -> None:
        call = req.call
        passthrough = passes_through(provider, call.request, target.model)
        chain = chain_of(provider, target.model)
        encoder = call.client.StreamEncoder(call.request, call.request.model)
        meter = req.meter
        held: list[bytes] = []
        reader = None
        with trio.CancelScope(deadline=trio.current_time() + self.streaming.ttfb_timeout_s) as scope:
            req.streaming_scope = scope
            try:
                async with provider.stream(self._for_upstream(req, provider), target.model,
                                           credential) as reader:
                    # A success status: the upstream has the request, whatever its body holds.
                    req.settle_attempt(index, Outcome.ANSWERED)
                    req.redecode = reader.redecode
                    try:
                        batch = await reader.next_batch()
                    except UpstreamError:
                        req.settle_attempt(index, Outcome.UNANSWERED)  # broken before its first event
                        raise
                    if batch is None:
                        req.settle_attempt(index, Outcome.UNANSWERED)  # no answer after all: try elsewhere
                        raise UpstreamProtocolError("The upstream closed the stream without sending anything.")
                    first_error = _only_error(batch)
                    if first_error is not None:
                        req.settle_attempt(index, Outcome.REFUSED)
                        raise first_error
                    content_type = reader.content_type if passthrough else encoder.content_type
                    if self.persist is not None:
                        await self.persist(req)
                    req.started = True
                    req.first_byte_at = trio.current_time()
                    await link.start(200, _headers(req, content_type, target))
                    complete = False
                    tap = None if passthrough else self._tap(req, provider)
                    try:
                        complete = await self._relay(batch, reader, scope, link, req, encoder, passthrough, held,
                                                     _edits(tap, chain))
                    except UpstreamError as exc:
                        self._fail(req, exc, encoder, reader, passthrough, held)
                    except ClientStuck:
                        pass  # settled below; nobody is reading the ending
                    except trio.Cancelled:
                        if self.stopping() and not req.client_gone:
                            await self._say_stopping(req, encoder, reader, passthrough, held, link)
                        raise
                    req.terminal = complete or reader.terminal
                    if tap is not None and req.terminal and meter.error is None:
                        tap.close()
                    if passthrough and meter.error_unread and not req.client_gone:
                        # the upstream said nothing of it: the client's own error event ends its stream
                        encoder.resume(meter.response_id, reader.decoder.last_sequence + 1)
                        held.append(encoder.error(meter.error))
                    if not req.terminal and meter.error is None and not req.client_gone:
                        self._fail(req, UpstreamProtocolError("The upstream ended the stream before its last event."),
                                   encoder, reader, passthrough, held)
            finally:
                req.streaming_scope = None
        if scope.cancelled_caught and not req.client_gone and meter.error is None:
            if not req.started:
                raise UpstreamTimeout("The upstream sent nothing before the time-to-first-byte deadline.")
            self._fail(req, UpstreamTimeout("The upstream stream stalled past its deadline."),
                       encoder, reader, passthrough, held, Trouble.TIMEOUT)
        if meter.error is None and not passthrough and not req.client_gone:
            held.append(encoder.close())
        await self.settle(req)
        if req.client_gone:
            return
        if call.recorder is not None:
            # the gateway's own closing event if it made one, else the upstream's
            answer = encoder.response or (reader.decoder.response if passthrough and reader is not None else None)
            if answer is not None:
                call.recorder.record(req, answer)
        with trio.move_on_after(self.streaming.client_write_timeout_s):
            await link.end(b"".join(held))

    async def _say_stopping(self, req: Request, encoder: StreamEncoder, reader: UpstreamStream, passthrough: bool,
                            held: list[bytes], link: ClientLink) -> None:
        """The grace period of a stop ended mid-stream: end the client's stream with an
        error event rather than a bare cut (the settlement follows in the dispatcher)."""
        self._fail(req, Stopping("The gateway is stopping; this response was cut."),
                   encoder, reader, passthrough, held, Trouble.SHUTDOWN)
        with trio.move_on_after(1.0, shield=True):
            await link.end(b"".join(held))

    def _fail(self, req: Request, exc: GatewayError, encoder: StreamEncoder, reader: UpstreamStream, passthrough: bool,
              held: list[bytes], trouble: Trouble = Trouble.UPSTREAM) -> None:
        """End the client's stream with its protocol's error event, after what was sent."""
        req.note(trouble)
        meter = req.meter
        if meter.error is not None:
            return
        meter.error = exc
        if passthrough:
            encoder.resume(meter.response_id, reader.decoder.last_sequence + 1)
        held.append(encoder.error(exc))

    async def _write(self, link: ClientLink, data: bytes, req: Request, scope: trio.CancelScope | None) -> None:
        """Write to the client on its own clock: the upstream's stall deadline stops while
        the gateway waits on a client that does not read, which gets
        ``client_write_timeout_s`` before it counts as gone."""
        if scope is not None:
            scope.deadline = math.inf
        with trio.move_on_after(self.streaming.client_write_timeout_s) as waited:
            await link.write(data)
        # the server's socket write is shielded: a deadline that passed shows as called,
        # the write having finished only once the client read again (or left)
        if waited.cancel_called:
            req.client_gone = True
            req.note(Trouble.CLIENT_GONE)
            raise ClientStuck()

    async def _relay(self, batch: list[Frame] | None, reader: UpstreamStream, scope: trio.CancelScope, link: ClientLink,
                     req: Request, encoder: StreamEncoder, passthrough: bool, held: list[bytes],
                     edit: Callable[[tuple], tuple] | None = None) -> bool:
        """Forward batches until the upstream ends (or, translated, until its error);
        True when the answer is complete without the end of its body.

        Each read's frames leave in one write. From the finish (or an error) on, bytes are
        held back: they go out after the settlement is on disk, and no more than
        ``max_held_bytes`` of them are kept. The protocol's own last event ends the relay
        at once (an upstream that keeps its connection open after it is not waited for);
        where the protocol has none (Chat without ``[DONE]``, Gemini), the end of body is
        waited for ``FINISH_TAIL_S`` after the finish, then the answer counts as complete.
        ``edit`` (the target's answer adapters) changes the events the client's encoder
        gets, after the meter saw them.
        """
        meter = req.meter
        stall = self.streaming.stall_timeout_s
        limit = self.streaming.max_held_bytes
        decoder = reader.decoder
        held_bytes = 0
        errored = False
        tail_until: float | None = None
        trace = req.transform
        while batch is not None:
            out = []
            for frame in batch:
                meter.observe(frame.events, frame.payload)
                if passthrough:  # bytes the gateway could not read are not the client's to parse either
                    chunk = b"" if frame.drop or _unread(frame) else frame.raw
                    if trace is not None:
                        trace.frame(frame.raw, _decoded(req, frame))
                else:
                    events = frame.events if edit is None else edit(frame.events)
                    if trace is not None:
                        trace.frame(frame.raw, events)
                    chunk = encoder.encode(events)
                if meter.finished or meter.error is not None:
                    if chunk:
                        held.append(chunk)
                        held_bytes += len(chunk)
                elif chunk:
                    out.append(chunk)
            if held_bytes > limit:
                held.clear()
                raise UpstreamProtocolError(f"The upstream sent more than {limit} bytes after its answer ended.")
            if out and not req.client_gone:
                await self._write(link, b"".join(out), req, scope)
            if decoder.ended and meter.error is None:
                return True
            if meter.error is not None and not errored:
                req.note(Trouble.UPSTREAM)
                if not passthrough or meter.error_unread:
                    return False  # ended with the client's protocol's error by the caller
                # The upstream's own closing events (Responses' response.failed after
                # error) follow the error: forward them, briefly.
                errored = True
                scope.deadline = trio.current_time() + AFTER_ERROR_GRACE_S
            if not errored:
                now = trio.current_time()
                deadline = now + stall
                if req.drain_deadline is not None:
                    deadline = min(deadline, req.drain_deadline)
                if meter.finished and decoder.ENDS_AT_EOF_AFTER_FINISH:
                    tail_until = tail_until or now + FINISH_TAIL_S  # waited for below, on its own
                scope.deadline = deadline
            if tail_until is not None:
                with trio.move_on_at(tail_until) as tail:
                    batch = await reader.next_batch()
                if tail.cancelled_caught:
                    return True  # finished, and no more came: complete
            else:
                batch = await reader.next_batch()
        return False
