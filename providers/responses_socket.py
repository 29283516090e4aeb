"""The Responses WebSocket mode, upstream side: one upstream socket per client connection.

A client that speaks the Responses API over a WebSocket sends a sequence of turns on
one connection. Its ``SocketSession`` (set in ``current_session`` for the length of
the client connection, so every task started inside sees it) keeps one upstream
socket per (provider, credential), opened on the first turn that needs it and reused
by the next ones, which is what lets an upstream chain turns from its connection-local
cache (``previous_response_id`` with ``store: false``).

A turn is one ``response.create`` message and the events that answer it, read until
the turn's own last event (``response.completed`` / ``incomplete`` / ``failed``, or an
``error`` frame). To the dispatcher a turn is a stream like any other: ``SocketTurn``
has a ``FrameReader``'s face, each message becoming a ``Frame`` whose ``raw`` is the
message's SSE form (``event: <type>`` / ``data: <the text as received>``), decoded by
the Responses ``StreamDecoder`` and redacted from its first error on, as the HTTP path
does. So the same deadlines, metering and pass-through apply.

Errors are mapped here, once: an ``error`` frame before any other event is raised as
the classified ``UpstreamError`` (its ``status``; ``headers`` for the wait), as an HTTP
error status would be, so the failover loop can try elsewhere; a refused handshake is
classified from its HTTP answer. A socket the upstream closed between turns is found
before the next message and replaced (nothing was sent); one that breaks after the
message went out is an ``UpstreamServerError`` with ``request_sent``; one the upstream
retired (``websocket_connection_limit_reached``, OpenAI's 60 minutes) refused the message
unread, which is sent once more on a new socket. A turn left before
its last event (a deadline, a cancel, the client gone) closes its socket at once and
the session forgets it, so the next turn opens a fresh one.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, AsyncIterator, Iterator

import attrs
import trio

from protocols.errors import UpstreamError, UpstreamProtocolError, UpstreamServerError, classify_upstream
from protocols.openai_responses_wire import error_from_wire
from protocols.redact import NO_SECRETS, Redactor
from protocols.retry_after import retry_after
from protocols.seams import StreamDecoder
from protocols.sse import MAX_EVENT_BYTES, SSEEvent
from protocols.unified import ErrorEvent
from providers.base import ErrorRedaction, Frame, encode_body, redecode
from providers.http11 import RequestBroken, RequestNotSent
from providers.proxy import Proxy
from providers.propagation import with_trace
from providers.websocket import HandshakeRefused, ProtocolViolation, WebSocket, open_websocket

RESPONSES_WEBSOCKET_BETA = "responses_websockets=2026-02-06"
PREVIOUS_RESPONSE_NOT_FOUND = "previous_response_not_found"
CONNECTION_LIMIT_REACHED = "websocket_connection_limit_reached"  # OpenAI retires a socket after 60 minutes
TURN_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_TYPE_PREFIX = b'{"type":"'
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


@attrs.frozen
class SocketTarget:
    """Where a turn's socket goes: the session's key (provider, credential id), the
    ``ws(s)://`` URL, the handshake's headers (the credential's key among them) and the
    transport's limits."""

    provider: str
    credential: str
    url: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    connect_timeout_s: float = 10.0
    max_message_bytes: int = MAX_EVENT_BYTES
    proxy: Proxy | None = None
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.credential)


@attrs.frozen
class SessionStatistics:
    """What an operator asks of a session: sockets open now, opened in all, turns run."""

    open: int
    opened: int
    turns: int


current_session: ContextVar["SocketSession | None"] = ContextVar("tollhouse_socket_session", default=None)


class SocketSession:
    """The upstream sockets of one client WebSocket connection."""

    def __init__(self) -> None:
        self._sockets: dict[tuple[str, str], WebSocket] = {}
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self.opened = 0
        self.turns = 0
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls) -> AsyncIterator["SocketSession"]:
        """A session set as ``current_session`` for the block (and the tasks started
        in it), its sockets closed on exit however the block ends."""
        session = cls()
        token = current_session.set(session)
        try:
            yield session
        finally:
            current_session.reset(token)
            await session.aclose()

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(open=sum(not ws.closed for ws in self._sockets.values()),
                                 opened=self.opened, turns=self.turns)

    @asynccontextmanager
    async def turn(self, target: SocketTarget, body: Mapping[str, Any], decoder: StreamDecoder,
                   redactor: Redactor = NO_SECRETS) -> AsyncIterator["SocketTurn"]:
        """Run one turn on ``target``'s socket: ``body`` sent as ``response.create``, the
        answer read through the yielded ``SocketTurn``. Turns on one socket take turns."""
        message = encode_body({"type": "response.create", **body}).decode("utf-8")
        lock = self._locks.setdefault(target.key, trio.Lock())
        async with lock:
            turn = await self._begin(target, message, decoder, redactor)
            try:
                yield turn
            finally:
                if not turn.reusable:
                    self._forget(target.key, turn.socket)

    async def _begin(self, target: SocketTarget, message: str, decoder: StreamDecoder, redactor: Redactor) -> "SocketTurn":
        """The turn's message sent and its first answer read. A socket the upstream
        retired (its connection-time limit) refused the message unread: it is sent once
        more, on a new one."""
        self.turns += 1
        try:
            return await self._send(target, message, decoder, redactor)
        except UpstreamError as exc:
            if error_code(exc) != CONNECTION_LIMIT_REACHED:
                raise
        return await self._send(target, message, decoder, redactor)

    async def _send(self, target: SocketTarget, message: str, decoder: StreamDecoder, redactor: Redactor) -> "SocketTurn":
        with _mapped(redactor):
            ws = await self._socket(target)
        turn = SocketTurn(ws, decoder, redactor)
        try:
            await turn.begin(message)
        except BaseException as exc:
            if not turn.reusable or error_code(exc) == CONNECTION_LIMIT_REACHED:
                self._forget(target.key, ws)
            raise
        return turn

    async def _socket(self, target: SocketTarget) -> WebSocket:
        """The open socket for ``target``: the kept one if it can still carry a message,
        else a new one."""
        if self.closed:
            raise RequestNotSent("the client's WebSocket session has ended")
        ws = self._sockets.get(target.key)
        if ws is not None and await ws.ready():
            return ws
        if ws is not None:
            self._forget(target.key, ws)
        # the turn that opens the socket lends its trace context to the handshake
        ws = await open_websocket(target.url, with_trace(target.headers), connect_timeout_s=target.connect_timeout_s,
                                  max_message_bytes=target.max_message_bytes, proxy=target.proxy,
                                  ssl_context=target.ssl_context)
        if self.closed:  # the session ended while the socket opened
            ws.abort()
            raise RequestNotSent("the client's WebSocket session has ended")
        self._sockets[target.key] = ws
        self.opened += 1
        return ws

    def _forget(self, key: tuple[str, str], ws: WebSocket) -> None:
        """Close a socket at once (no checkpoint: also in a cancelled scope) and drop it."""
        ws.abort()
        if self._sockets.get(key) is ws:
            del self._sockets[key]

    async def aclose(self) -> None:
        """Close every socket (a close frame each, briefly, also after a cancel)."""
        self.closed = True
        sockets = list(self._sockets.values())
        self._sockets.clear()
        for ws in sockets:
            await ws.aclose()


class SocketTurn:
    """One turn's messages as batches of frames: what the dispatcher reads from a
    ``providers.base.FrameReader``."""

    content_type = "text/event-stream"

    def __init__(self, ws: WebSocket, decoder: StreamDecoder, redactor: Redactor = NO_SECRETS) -> None:
        self.decoder = decoder
        self.redactor = redactor
        self.socket = ws
        self._redacted = ErrorRedaction(redactor)
        self._first: list[Frame] | None = None
        self._over = False  # the turn's last message arrived
        self._stray = False  # messages followed it: the socket is in no known state
        self._answering = False  # a message of the answer has arrived

    @property
    def terminal(self) -> bool:
        """The turn's own last event arrived."""
        return self._over

    @property
    def reusable(self) -> bool:
        """The socket can carry the next turn: this one ended where the protocol says."""
        return self._over and not self._stray and not self.socket.closed

    def redecode(self, payloads: list) -> list:
        return redecode(self.decoder, payloads)

    async def begin(self, message: str) -> None:
        """Send the turn's message and wait for the first answer: an ``error`` frame
        there is raised like an HTTP error status (the turn is then over)."""
        with _mapped(self.redactor):
            await self.socket.send_text(message)
        texts = await self._receive()
        if not texts:
            raise UpstreamServerError("The upstream closed the WebSocket before answering.", request_sent=True)
        refusal = _opening_error(texts[0], self.redactor)
        if refusal is not None:
            self._over = True
            self._stray = len(texts) > 1
            raise refusal
        self._first = self._frames(texts)

    async def next_batch(self) -> list[Frame] | None:
        """The frames of the next read; None once the turn is over (or the upstream
        closed the socket before its end, which leaves ``terminal`` false)."""
        if self._first is not None:
            batch, self._first = self._first, None
            return batch
        if self._over:
            return None
        texts = await self._receive()
        if not texts:
            return None
        return self._frames(texts)

    async def aclose(self) -> None:
        """A turn left before its end leaves its socket in no known state: closed."""
        if not self._over:
            self.socket.abort()

    async def _receive(self) -> list[str]:
        with _mapped(self.redactor):
            return await self.socket.receive_texts()

    def _frames(self, texts: list[str]) -> list[Frame]:
        frames = []
        for text in texts:
            if self._over:
                self._stray = True
                break
            frame, kind = _frame(text, self.decoder)
            frames.append(frame)
            errored = any(isinstance(ev, ErrorEvent) for ev in frame.events)
            if kind in TURN_ENDS or self.decoder.ended or errored:
                self._over = True
                if errored and kind not in TURN_ENDS and self._answering:
                    # a mid-turn error: the upstream's own closing event may still follow,
                    # and must not be read as the next turn's answer -- the socket is retired
                    self._stray = True
            self._answering = True
        return self._redacted(frames)


def error_code(err: BaseException) -> str | None:
    """The ``code`` of the upstream's error object an error was classified from."""
    if not isinstance(err, UpstreamError) or not err.upstream_body:
        return None
    try:
        doc = json.loads(err.upstream_body)
    except ValueError:
        return None
    inner = doc.get("error") if isinstance(doc, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code if isinstance(code, str) else None


def previous_response_missing(err: BaseException) -> bool:
    """The upstream does not hold the ``previous_response_id`` the turn chained to
    (its connection-local cache was lost, or it never saw it): resend the turn with
    the whole conversation."""
    return error_code(err) == PREVIOUS_RESPONSE_NOT_FOUND


# ---------------------------------------------------------------- frames and errors


def _frame(text: str, decoder: StreamDecoder) -> tuple[Frame, str | None]:
    """A message as the SSE event it would have been on the HTTP stream."""
    data = text.encode("utf-8", "surrogatepass")
    kind = _message_type(data)
    head = b"event: " + kind.encode() + b"\n" if kind else b""
    raw = head + b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(data)) + b"\n"
    events = decoder.feed(SSEEvent(raw, data, kind))
    return Frame(raw, tuple(events), False, None if events else data), kind


def _message_type(data: bytes) -> str | None:
    """The message's ``type`` (read without decoding when it comes first, as OpenAI
    sends it), when it can name an SSE event."""
    if data.startswith(_TYPE_PREFIX):
        end = data.find(b'"', len(_TYPE_PREFIX))
        kind = data[len(_TYPE_PREFIX):end].decode("utf-8", "replace") if end > 0 else None
    else:
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str) or not kind or "\\" in kind or any(c in kind for c in "\r\n"):
        return None
    return kind


def _opening_error(text: str, redactor: Redactor) -> UpstreamError | None:
    """The turn's first message when it is an ``error`` frame, as the error tree has it:
    classified by its ``status`` like an HTTP answer (``headers`` give the wait), or by
    its code when it has none."""
    data = text.encode("utf-8", "surrogatepass")
    if _message_type(data) != "error":
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    status = doc.get("status", doc.get("status_code"))
    inner = doc.get("error")
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        raw_headers = doc.get("headers")
        headers = {str(k): v if isinstance(v, str) else json.dumps(v)
                   for k, v in (raw_headers.items() if isinstance(raw_headers, Mapping) else ())}
        body = json.dumps({"error": inner} if inner is not None else doc).encode()
        err = classify_upstream(status, body, headers, retry_after(headers, body, time.time()), redactor)
        if isinstance(inner, Mapping) and isinstance(inner.get("param"), str):
            err.param = inner["param"]
        return err
    err = error_from_wire(inner if isinstance(inner, Mapping) else doc, "The upstream refused the turn.")
    redactor.error(err)
    return err


@contextmanager
def _mapped(redactor: Redactor) -> Iterator[None]:
    """The socket's failures as the error tree has them (redacted: a transport error
    may quote a header, a refusal's body the key)."""
    try:
        yield
    except HandshakeRefused as exc:
        err = classify_upstream(exc.status, exc.body, exc.headers,
                                retry_after(exc.headers, exc.body, time.time()), redactor)
        err.request_sent = False
        raise err from None
    except ProtocolViolation as exc:
        raise UpstreamProtocolError(redactor.text(f"upstream WebSocket rejected: {exc}")) from None
    except RequestNotSent as exc:
        raise UpstreamServerError(redactor.text(f"cannot reach the upstream: {exc}"), request_sent=False) from None
    except RequestBroken as exc:
        raise UpstreamServerError(redactor.text(f"upstream WebSocket failed: {exc}"), request_sent=True) from None

