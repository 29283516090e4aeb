"""A small WebSocket client on trio and wsproto: the upstream side of the Responses
WebSocket mode.

wsproto does the protocol (handshake, frames, permessage-deflate, UTF-8); this module
does the I/O around it, the way ``http11`` does around h11: one socket, read with one
``receive_some`` per step, closed at once when it is abandoned. Only text messages are
taken (the Responses mode is JSON text frames); a fragmented message is reassembled,
pings are answered while the socket is read, and a message larger than
``max_message_bytes`` closes the socket with 1009 before it is ever held whole.

Failures are the transport's two errors (``http11``), so a caller maps them once:

* ``RequestNotSent`` -- no message was written: DNS, connect, proxy, TLS, the
  handshake failed, or the socket was found closed before a message was sent.
  ``HandshakeRefused`` is one of these that carries the HTTP answer (status, headers,
  a bounded body) the server gave instead of ``101``, for ``classify_upstream``.
* ``RequestBroken`` -- a message was handed to the socket, or the exchange then broke
  (reset, the server broke the protocol: ``ProtocolViolation``, ``MessageTooLarge``).

``send_text`` marks the task's ``WriteWatch`` before writing, as the HTTP pool does.
A socket is used by one task at a time (the turn that owns it); ``ready()`` is the
check between turns: it handles what the server sent while nobody was reading (a ping
is answered, a close is seen) and says whether a message can still be sent.
"""

from __future__ import annotations

import select
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from providers.http11 import RequestBroken, RequestNotSent, WriteWatch
from providers.proxy import Proxy, ProxyError, open_tunnel

# One read's bytes; with deflate, also what one read can inflate from (wsproto inflates
# a read's payload in one go), so it is kept well below the message bound.
READ_SIZE = 16 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_REFUSAL_BODY = 64 * 1024
CLOSE_TIMEOUT_S = 1.0  # how long a close frame may take to leave before the socket is closed anyway
IDLE_READ_S = 1.0  # between turns: how long bytes the socket showed as readable may take to arrive
_DEAD = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError)


class HandshakeRefused(RequestNotSent):
    """The server answered the upgrade with an HTTP status instead of ``101``."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(f"the server refused the WebSocket handshake with {status}")
        self.status = status
        self.headers = dict(headers)
        self.body = body


class ProtocolViolation(RequestBroken):
    """The server sent what a Responses WebSocket never carries (a binary message, a
    broken frame); the socket was closed with the matching code."""


class MessageTooLarge(ProtocolViolation):
    """A message outgrew ``max_message_bytes``; the socket was closed with 1009."""


class Deflate(PerMessageDeflate):
    """permessage-deflate that lets a control frame (a ping) arrive between the
    fragments of a compressed message, as RFC 6455 allows: wsproto 1.3's own resets the
    message's compression state when the control frame ends, and inflates the rest of
    the message as if it were plain. Control frames are never compressed, so they are
    passed through here without touching that state."""

    def __init__(self) -> None:
        super().__init__()
        self._control = False  # the frame being read is a control frame

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: RsvBits, payload_length: int) -> Any:
        self._control = opcode.iscontrol()
        if self._control:
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else RsvBits(False, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> Any:
        return data if self._control else super().frame_inbound_payload_data(proto, data)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> Any:
        return None if self._control else super().frame_inbound_complete(proto, fin)


class WebSocket:
    """An open client WebSocket (after the ``101``)."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType, conn: WSConnection, *,
                 max_message_bytes: int, deflate: bool, headers: Mapping[str, str]) -> None:
        self._stream = stream
        self._sock = sock
        self._conn = conn
        self._tls = isinstance(stream, trio.SSLStream)
        self.max_message_bytes = max_message_bytes
        self.deflate = deflate  # permessage-deflate was negotiated
        self.headers = dict(headers)  # the 101's headers
        self.close_code: int | None = None  # the server's close code (1006: the connection ended without one)
        self._outbox = bytearray()  # control frames (pongs, close) waiting for the next write
        self._parts: list[str] = []
        self._size = 0
        self._remote_closed = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """No message can be sent or received any more (either side closed, or it broke)."""
        return self._closed or self._remote_closed

    # ------------------------------------------------------------ sending

    async def send_text(self, text: str) -> None:
        """Send one text message. ``RequestNotSent`` if the socket was closed before a
        byte of it left; ``RequestBroken`` if the write failed (the socket is closed)."""
        if self.closed:
            raise RequestNotSent("the WebSocket was closed before the message was sent")
        data = bytes(self._outbox) + self._conn.send(TextMessage(data=text))
        self._outbox.clear()
        WriteWatch.mark()
        try:
            await self._stream.send_all(data)
        except _TRANSPORT_ERRORS as exc:
            self.abort()
            raise RequestBroken(f"the WebSocket broke while a message was sent: {type(exc).__name__}") from None
        except BaseException:
            self.abort()  # cancelled mid-write: a frame may be cut, the socket cannot carry another
            raise

    # ------------------------------------------------------------ receiving

    async def receive_text(self) -> str | None:
        """The next whole text message; None once the server closed the connection."""
        while True:
            text = await self._take_checked()
            if text is not None:
                return text
            if self._remote_closed:
                await self._close_now()
                return None
            if self._closed:
                return None
            await self._flush()
            self._feed(await self._receive())

    async def receive_texts(self) -> list[str]:
        """The next message and every whole one already received behind it (what one
        read brought, so that it can leave in one write); [] once the server closed."""
        first = await self.receive_text()
        if first is None:
            return []
        texts = [first]
        while (more := await self._take_checked()) is not None:
            texts.append(more)
        return texts

    async def ready(self) -> bool:
        """Between turns: true when a message can be sent. Bytes that arrived while
        nobody read are handled first: pings answered, a close seen (the socket is then
        closed). A message outside a turn leaves the socket in no known state: closed."""
        try:
            while not self.closed:
                if await self._take_checked() is not None:
                    self.abort()
                    break
                if self._remote_closed:
                    await self._close_now()
                    break
                if not self._readable():
                    await self._flush()
                    break
                with trio.move_on_after(IDLE_READ_S) as waited:
                    data = await self._receive()
                if waited.cancelled_caught:
                    self.abort()
                    break
                self._feed(data)
        except RequestBroken:
            self.abort()
        return not self.closed

    def _feed(self, data: bytes | bytearray) -> None:
        self._conn.receive_data(data or None)  # type: ignore[arg-type]  # b"": the TCP connection ended

    async def _receive(self) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(READ_SIZE)
        except _TRANSPORT_ERRORS as exc:
            self.abort()
            raise RequestBroken(f"the WebSocket connection failed: {type(exc).__name__}") from None
        except trio.Cancelled:
            if self._tls:
                self.abort()  # a cancelled TLS read leaves the stream unusable
            raise

    async def _take_checked(self) -> str | None:
        """``_take``, with a protocol violation turned into a closed socket and the error."""
        try:
            return self._take()
        except ProtocolViolation:
            await self._close_now()
            raise

    def _take(self) -> str | None:
        """The next complete message from the bytes already received, or None."""
        for event in self._conn.events():
            if isinstance(event, TextMessage):
                self._grow(event.data)
                if event.message_finished:
                    text = "".join(self._parts)
                    self._parts, self._size = [], 0
                    return text
            elif isinstance(event, BytesMessage):
                self._refuse(1003, "binary messages are not taken")
            elif isinstance(event, Ping):
                self._queue(event.response())
            elif isinstance(event, CloseConnection):
                if self._conn.state is ConnectionState.OPEN:  # a frame wsproto could not parse
                    self._refuse(event.code, event.reason or "invalid frame")
                self.close_code = event.code
                self._remote_closed = True
                if self._conn.state is ConnectionState.REMOTE_CLOSING:
                    self._queue(event.response())
                return None
        return None

    def _grow(self, piece: str) -> None:
        self._size += len(piece) if piece.isascii() else len(piece.encode("utf-8", "surrogatepass"))
        if self._size > self.max_message_bytes:
            self._queue(CloseConnection(code=1009, reason="message too big"))
            raise MessageTooLarge(f"a WebSocket message exceeded {self.max_message_bytes} bytes")
        self._parts.append(piece)

    def _refuse(self, code: int, reason: str) -> None:
        self._queue(CloseConnection(code=code, reason=reason[:100]))
        raise ProtocolViolation(f"the server broke the WebSocket protocol ({code}: {reason[:100]})")

    def _queue(self, event: Event) -> None:
        try:
            self._outbox += self._conn.send(event)
        except LocalProtocolError:
            pass  # the state allows no such frame any more (a close already sent)

    # ------------------------------------------------------------ closing

    async def _flush(self) -> None:
        if not self._outbox or self._closed:
            return
        data = bytes(self._outbox)
        self._outbox.clear()
        try:
            await self._stream.send_all(data)
        except _TRANSPORT_ERRORS as exc:
            self.abort()
            raise RequestBroken(f"the WebSocket connection failed: {type(exc).__name__}") from None
        except BaseException:
            self.abort()
            raise

    async def _close_now(self) -> None:
        """Send what is queued (a close frame, the answer to the server's), briefly, then
        close the socket."""
        try:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await self._flush()
        except RequestBroken:
            pass  # closed by _flush; the peer learns from the FIN
        finally:
            self.abort()

    async def aclose(self, code: int = 1000) -> None:
        """Close politely (a close frame, given ``CLOSE_TIMEOUT_S`` to leave, shielded
        so it also runs after a cancel), then close the socket."""
        if self._closed:
            return
        if self._conn.state is ConnectionState.OPEN:
            self._queue(CloseConnection(code=code))
        await self._close_now()

    def abort(self) -> None:
        """Close the socket at once, without a checkpoint (usable in a cancelled scope)."""
        self._closed = True
        self._sock.close()

    def _readable(self) -> bool:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN | select.POLLPRI)
        return any(mask & _DEAD for _fd, mask in poller.poll(0))


# ---------------------------------------------------------------- opening


async def open_websocket(url: str, headers: Mapping[str, str], *, connect_timeout_s: float = 10.0,
                         max_message_bytes: int = MAX_MESSAGE_BYTES, extensions_deflate: bool = True,
                         ssl_context: ssl.SSLContext | None = None, proxy: Proxy | None = None) -> WebSocket:
    """Connect (TCP, the proxy's tunnel, TLS for ``wss://``) and upgrade, all within
    ``connect_timeout_s``; the caller closes the socket. Raises ``RequestNotSent``
    (``HandshakeRefused`` for an HTTP answer)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {parts.scheme}://")
    tls = parts.scheme == "wss"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    authority = parts.netloc.rpartition("@")[2] or host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    via = f" through proxy {proxy.address}" if proxy is not None else ""
    try:
        with trio.fail_after(connect_timeout_s):
            tcp = await trio.open_tcp_stream(*((proxy.host, proxy.port) if proxy is not None else (host, port)))
            try:
                if proxy is not None:
                    await open_tunnel(tcp, proxy, host, port)
                stream: trio.abc.Stream = tcp
                if tls:
                    stream = trio.SSLStream(tcp, ssl_context or ssl.create_default_context(),
                                            server_hostname=host, https_compatible=True)
                    await stream.do_handshake()
                return await _upgrade(stream, tcp.socket, authority, target, headers, extensions_deflate,
                                      max_message_bytes)
            except BaseException:
                tcp.socket.close()
                raise
    except trio.TooSlowError:
        raise RequestNotSent(f"opening a WebSocket to {host}:{port}{via} timed out") from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError, ProxyError, RemoteProtocolError) as exc:
        raise RequestNotSent(f"cannot open a WebSocket to {host}:{port}{via}: {exc}") from None


@asynccontextmanager
async def connect(url: str, headers: Mapping[str, str], *, connect_timeout_s: float = 10.0,
                  max_message_bytes: int = MAX_MESSAGE_BYTES, extensions_deflate: bool = True,
                  ssl_context: ssl.SSLContext | None = None, proxy: Proxy | None = None) -> AsyncIterator[WebSocket]:
    """``open_websocket`` for the length of a block, closed on exit however it ends."""
    ws = await open_websocket(url, headers, connect_timeout_s=connect_timeout_s,
                              max_message_bytes=max_message_bytes, extensions_deflate=extensions_deflate,
                              ssl_context=ssl_context, proxy=proxy)
    try:
        yield ws
    finally:
        await ws.aclose()


async def _upgrade(stream: trio.abc.Stream, sock: trio.socket.SocketType, authority: str, target: str,
                   headers: Mapping[str, str], deflate: bool, max_message_bytes: int) -> WebSocket:
    conn = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await stream.send_all(conn.send(Request(host=authority, target=target, extra_headers=extra,
                                            extensions=[Deflate()] if deflate else [])))
    refused: RejectConnection | None = None
    body = bytearray()
    while True:
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return WebSocket(stream, sock, conn, max_message_bytes=max_message_bytes,
                                 deflate=any(isinstance(e, PerMessageDeflate) for e in event.extensions),
                                 headers=_text_headers(event.extra_headers))
            if isinstance(event, RejectConnection):
                refused = event
                if not event.has_body:
                    raise HandshakeRefused(event.status_code, _text_headers(event.headers), b"")
            elif isinstance(event, RejectData) and refused is not None:
                body += event.data
                if event.body_finished or len(body) >= MAX_REFUSAL_BODY:
                    raise HandshakeRefused(refused.status_code, _text_headers(refused.headers),
                                           bytes(body[:MAX_REFUSAL_BODY]))
        data = await stream.receive_some(READ_SIZE)
        if not data and refused is not None:
            raise HandshakeRefused(refused.status_code, _text_headers(refused.headers), bytes(body))
        if not data:
            raise RequestNotSent("the server closed the connection during the WebSocket handshake")
        conn.receive_data(data)  # type: ignore[arg-type]  # wsproto takes a bytearray too


def _text_headers(headers: list) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in headers}
