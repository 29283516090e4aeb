"""Hypercorn's HTTP/1.1 protocol with the gateway's connection rules.

Hypercorn 0.18 has no setting for either rule below, so they live in a subclass of its
``H11Protocol``, installed where its ``ProtocolWrapper`` looks the class up:

- An ``Upgrade: h2c`` request is answered in HTTP/1.1, as if the header were absent
  (RFC 9110 section 7.8 lets a server ignore an upgrade). Hypercorn would answer
  ``101 Switching Protocols`` itself and speak HTTP/2 on the connection, where none of
  the rules of this module apply; the gateway offers HTTP/1.1 only.
  A cleartext HTTP/2 preface (``PRI * HTTP/2.0``) is refused the same way: 505, closed.
- A request head must arrive whole within ``request_head_timeout`` of its first byte,
  or the connection is closed. Hypercorn's own ``read_timeout`` bounds each read of
  the connection, including the reads it keeps waiting on while a long response
  streams to a client that has nothing more to send, so it cannot be used for this;
  the keep-alive idle timer still bounds the wait for the first byte.
- An answer sent before its request's body was read (a stranger's 401, a 408, a 400
  for ambiguous framing) says ``Connection: close``, and the connection is closed only
  once the client has finished sending the body (read and dropped), or after
  ``LINGER_S``. Closing a socket with unread bytes makes the kernel send a reset,
  which can destroy the answer before the client reads it: a client still uploading
  would see "connection reset" instead of its 401, and retry.
- Bytes that arrive once the answer in progress has said ``Connection: close`` (a
  request pipelined behind it, or sent before the client read that header) are read
  and dropped: that request is not served (RFC 9112 section 9.6), and the answer in
  progress is finished before the connection closes. Hypercorn's h11 protocol would
  take them for a protocol error and close the connection from its reading task,
  cutting the answer; hypercorn adds that header itself to the answer that reaches
  ``keep_alive_max_requests`` on one connection.
- A close of the connection waits for the socket write in progress (up to
  ``WRITE_WAIT_S``), and no write starts once a close has begun. Hypercorn's close
  (its ``TCPServer._close``) sends the FIN without its send lock, so a close asked for
  by another task than the response's writer (the reading task, a timer) would make
  that writer's next ``send_all`` raise ``trio.BusyResourceError`` inside the
  application.
- A whole answer (a head with ``Content-Length``) is written in one socket write, its
  head held until its body is there; hypercorn writes the head, the body and the end
  of the message each on its own, and the first write to a loopback client costs its
  wake-up. A head held is written at its body's end, or when the stream or the
  connection closes, whichever comes first (or once past ``HOLD_MAX``). A streamed
  answer's head goes at once.

Each HTTP request's scope carries a ``gateway.disconnect.Disconnect``
(``scope["extensions"]["tollhouse.disconnect"]``), fired where the protocol closes the
request's stream, when hypercorn queues ``http.disconnect``: the dispatcher hears a
client leave without a task waiting on ``receive``.

Hypercorn restarts a timer task at every request of a connection (its keep-alive
timer; the head deadline above is another): its ``TrioSingleTask`` starts each with
``nursery.start``, one scheduler round trip and a lock per restart. ``QuickSingleTask``
(installed in its place) spawns the task with a cancel scope made beforehand, so a
restart or a stop never waits.
"""

from __future__ import annotations

import math

import h11
import hypercorn.protocol
import hypercorn.trio.tcp_server
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio.worker_context import TrioSingleTask, WorkerContext

from gateway.disconnect import EXTENSION, Disconnect

LINGER_S = 2.0  # how long the rest of an unread body is waited for, after the answer
WRITE_WAIT_S = 1.0  # how long a close waits for a socket write in progress
HOLD_MAX = 64 * 1024  # a whole answer larger than this is written as it comes, not joined


class GatewayH11Protocol(H11Protocol):
    """``H11Protocol`` that ignores h2c upgrades and times out a slow request head."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer = self.context.single_task_class()
        self._head_timer_running = False
        self._refusal: int | None = None
        self._linger_timer = self.context.single_task_class()
        self._lingering = False
        self._send_to_socket = self.send
        self.send = self._send_serialised
        self._writes_in_flight = 0
        self._writes_done: trio.Event | None = None  # made by a close that waits for a write
        self._closing = False
        self._held: list[bytes] | None = None  # a whole answer's bytes, written together at its end
        self._disconnect: Disconnect | None = None  # the request's, fired when its stream closes
        self._held_size = 0

    async def _send_serialised(self, event: Event) -> None:
        """The server's ``send``, with a close that never overlaps a socket write."""
        if isinstance(event, RawData) and self._held is not None and not self._closing:
            self._held.append(event.data)
            self._held_size += len(event.data)
            return
        if isinstance(event, Closed):
            await self._release_held()
        if isinstance(event, RawData):
            if self._closing:
                return  # the connection is being closed: these bytes have nobody to go to
            self._writes_in_flight += 1
            try:
                await self._send_to_socket(event)
            finally:
                self._writes_in_flight -= 1
                if not self._writes_in_flight and self._writes_done is not None:
                    self._writes_done.set()
                    self._writes_done = None
            return
        if isinstance(event, Closed):
            self._closing = True
            # A write to a client that reads is brief; one to a client that does not is
            # waited for only so long, then cut by the close (its ``send_all`` still holds
            # the socket, so the close's FIN is skipped and the socket closed under it).
            with trio.move_on_after(WRITE_WAIT_S, shield=True):
                while self._writes_in_flight:
                    if self._writes_done is None:
                        self._writes_done = trio.Event()
                    await self._writes_done.wait()
        await self._send_to_socket(event)

    async def handle(self, event) -> None:
        if isinstance(event, RawData) and event.data and self._closes_after_answer():
            return  # a request behind an answer that closes the connection: not served
        if isinstance(event, RawData) and event.data and self.stream is None and not self._head_timer_running \
                and not self._lingering:
            self._head_timer_running = True  # the first byte of a request head: its clock starts
            await self._head_timer.restart(self.task_group, self._head_deadline)
        elif isinstance(event, Closed):
            await self._stop_head_timer()
            if self._lingering:
                self._lingering = False
                await self._linger_timer.stop()
        await super().handle(event)
        if self._lingering:
            await self._drop_unread_body()

    async def stream_send(self, event) -> None:
        if isinstance(event, Response) and event.status_code >= 200 and self._body_unread() \
                and not any(name.lower() == b"connection" for name, _ in event.headers):
            # answered before the body was read: this connection cannot serve another request
            event = Response(stream_id=event.stream_id, status_code=event.status_code,
                             headers=[*event.headers, (b"connection", b"close")])
        if isinstance(event, Response) and event.status_code >= 200 \
                and any(name.lower() == b"content-length" for name, _ in event.headers):
            self._held = []  # a whole answer: its head waits for its body
        try:
            await super().stream_send(event)
        finally:
            if isinstance(event, (EndBody, StreamClosed)) or isinstance(event, Body) and self._held_size > HOLD_MAX:
                await self._release_held()

    async def _release_held(self) -> None:
        """Write a whole answer's held bytes in one go (nothing held: nothing written)."""
        held, self._held, self._held_size = self._held, None, 0
        if held:
            await self._send_serialised(RawData(data=b"".join(held)))

    async def _maybe_recycle(self) -> None:
        if self._body_unread() and self.connection.our_state in (h11.DONE, h11.MUST_CLOSE):
            await self._close_stream()  # the rest of the body is read and dropped (see handle)
            self._lingering = True
            await self._linger_timer.restart(self.task_group, self._linger_deadline)
            await self.can_read.set()
            await self._drop_unread_body()
            return
        await super()._maybe_recycle()

    async def _drop_unread_body(self) -> None:
        """Drop what has arrived of the unread body; close once it is all in."""
        while True:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError:
                break
            if event is h11.NEED_DATA:
                return
            if not isinstance(event, h11.Data):
                break  # its end (or the client's EOF): nothing unread is left
        self._lingering = False
        await self._linger_timer.stop()
        await self.send(Closed())

    def _closes_after_answer(self) -> bool:
        """Whether the answer in progress (or just sent) ends this connection: it said
        ``Connection: close``, or the client did, after the request was read whole.
        Nothing the client sends now is a request to serve."""
        return (isinstance(self.connection, h11.Connection) and self.connection.their_state is h11.MUST_CLOSE
                and self.connection.our_state in (h11.SEND_RESPONSE, h11.SEND_BODY, h11.MUST_CLOSE))

    def _body_unread(self) -> bool:
        return isinstance(self.connection, h11.Connection) and self.connection.their_state is h11.SEND_BODY

    async def _check_protocol(self, event: h11.Request) -> None:
        if _wants_h2c(event):
            return  # answered in HTTP/1.1, the Upgrade header ignored
        if event.method == b"PRI" and event.target == b"*":
            self._refusal = 505
            return
        await super()._check_protocol(event)

    async def _create_stream(self, request: h11.Request) -> None:
        await self._stop_head_timer()
        if self._refusal is not None:
            await self._send_error_response(self._refusal)
            await self.send(Closed())
            return
        await super()._create_stream(request)
        if isinstance(self.stream, HTTPStream):  # its scope is made, its application not yet run
            self._disconnect = self.stream.scope["extensions"][EXTENSION] = Disconnect()

    async def _close_stream(self) -> None:
        disconnect, self._disconnect = self._disconnect, None
        if disconnect is not None:
            disconnect.fire()
        await super()._close_stream()

    async def _stop_head_timer(self) -> None:
        if self._head_timer_running:
            self._head_timer_running = False
            await self._head_timer.stop()

    async def _head_deadline(self) -> None:
        await trio.sleep(getattr(self.config, "request_head_timeout", math.inf))
        self._head_timer_running = False
        with trio.CancelScope(shield=True):
            await self.send(Closed())


    async def _linger_deadline(self) -> None:
        await trio.sleep(LINGER_S)
        self._lingering = False
        with trio.CancelScope(shield=True):
            await self.send(Closed())


class QuickSingleTask:
    """Hypercorn's ``SingleTask`` (at most one task running ``action``; ``restart``
    replaces it, ``stop`` cancels it) without a wait: the task's cancel scope is made
    here, so ``restart`` cancels the old task and spawns the new one without starting it
    through ``nursery.start``. Nothing awaits in between, so no lock is needed; a task
    stopped before it first runs enters its scope already cancelled and ends at once."""

    __slots__ = ("_scope",)

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None

    async def restart(self, task_group, action) -> None:
        if self._scope is not None:
            self._scope.cancel()
        self._scope = scope = trio.CancelScope()
        task_group._nursery.start_soon(_run_within, scope, action)

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


async def _run_within(scope: trio.CancelScope, action) -> None:
    with scope:
        await action()


def _wants_h2c(event: h11.Request) -> bool:
    for name, value in event.headers:
        if name.lower() == b"upgrade" and value.strip().lower() == b"h2c":
            return True
    return False


def install() -> None:
    """Make hypercorn's ``ProtocolWrapper`` build ``GatewayH11Protocol`` for HTTP/1.1.

    Hypercorn looks the class up by name in ``hypercorn.protocol`` for every new
    connection; that lookup is the one seam it offers. Its timer class is looked up the
    same way, by ``TCPServer`` and through ``WorkerContext``: both get ``QuickSingleTask``.
    Idempotent; refuses to replace a class it does not know (a hypercorn upgrade that
    moved the seam must be noticed).
    """
    current = hypercorn.protocol.H11Protocol
    if current is GatewayH11Protocol:
        return
    if current is not H11Protocol:
        raise RuntimeError(f"hypercorn.protocol.H11Protocol is {current!r}, not hypercorn's own class")
    timers = (hypercorn.trio.tcp_server.TrioSingleTask, WorkerContext.single_task_class)
    if any(t is not TrioSingleTask for t in timers):
        raise RuntimeError(f"hypercorn's trio timer classes are {timers!r}, not its own TrioSingleTask")
    hypercorn.trio.tcp_server.TrioSingleTask = QuickSingleTask  # read by TCPServer for its keep-alive timer
    WorkerContext.single_task_class = QuickSingleTask  # read by the protocols (the head deadline too)
    hypercorn.protocol.H11Protocol = GatewayH11Protocol
