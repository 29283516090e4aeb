"""A small keep-alive HTTP/1.1 client on trio and h11: the gateway's upstream transport.

Why not httpx: on the hot path the gateway needs exactly one thing -- send a POST to
a known origin and read the body as it arrives -- and httpx/httpcore spent a large
share of the gateway's CPU around it (pool scans that grow with open connections,
nested async generators per read, a thread-safe pool). This client keeps one idle
stack of connections per origin, reads with one ``receive_some`` per call, and
closes a connection at once when its response is abandoned, so a cancelled request
never leaves a half-read stream in the pool.

A pooled connection the server already closed is detected when the request fails
before any response byte arrived; the request is then sent once more on a new
connection (the server cannot have acted on it).
"""

from __future__ import annotations

import ssl
from typing import Iterable
from urllib.parse import urlsplit

import h11
import trio

READ_SIZE = 65536


class UpstreamConnectError(Exception):
    """The origin could not be reached (DNS, refused, TLS, connect timeout)."""


class UpstreamReadError(Exception):
    """The connection failed or the peer broke HTTP/1.1 after the request was sent."""


class _Connection:
    __slots__ = ("stream", "h11")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024 * 1024)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self.stream)


class Response:
    """A response whose head has arrived; the body is read with ``receive``."""

    __slots__ = ("status", "headers", "_conn", "_pool", "_done")

    def __init__(self, status: int, headers: dict, conn: _Connection, pool: "Pool") -> None:
        self.status = status
        self.headers = headers
        self._conn: _Connection | None = conn
        self._pool = pool
        self._done = False

    async def receive(self) -> bytes | None:
        """The next piece of body (all that one read produced); None at the end."""
        conn = self._conn
        while not self._done and conn is not None:
            out = []
            while True:
                try:
                    event = conn.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    raise UpstreamReadError(f"upstream broke HTTP/1.1: {exc}") from None
                if event is h11.NEED_DATA:
                    break
                if type(event) is h11.Data:
                    out.append(bytes(event.data))
                elif type(event) is h11.EndOfMessage:
                    self._done = True
                    break
                elif type(event) is h11.ConnectionClosed:
                    raise UpstreamReadError("upstream closed the connection mid-body")
            if out or self._done:
                if self._done:
                    await self._release()
                return b"".join(out) if out else None
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise UpstreamReadError(f"upstream connection failed: {type(exc).__name__}") from None
            conn.h11.receive_data(data)
        return None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (remaining) body; stops early at ``limit`` bytes."""
        parts, size = [], 0
        while True:
            chunk = await self.receive()
            if chunk is None:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                return b"".join(parts)

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                await conn.close()
                return
            self._pool._put(conn)
        else:
            await conn.close()

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it."""
        if self._done:
            await self._release()
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


class Pool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0, max_idle: int = 256,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = parts.netloc.encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.tls else None)
        self._idle: list[_Connection] = []
        self.opened = 0

    def _put(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            trio.lowlevel.spawn_system_task(conn.close)

    async def _connect(self) -> _Connection:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(self.host, self.port)
                if self.tls:
                    stream = trio.SSLStream(stream, self.ssl_context, server_hostname=self.host,
                                            https_compatible=True)
                    await stream.do_handshake()
        except trio.TooSlowError:
            raise UpstreamConnectError(f"connecting to {self.host}:{self.port} timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.opened += 1
        return _Connection(stream)

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes) -> Response:
        """Send a request to ``url`` (on this pool's origin) and wait for the response head."""
        parts = urlsplit(url)
        target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
        head = [("host", self.authority), ("content-length", str(len(body)).encode())]
        head += [(k.encode(), v.encode()) for k, v in headers]
        for attempt in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                return await self._exchange(conn, method.encode(), target, head, body)
            except _StaleConnection:
                await conn.close()
                if not reused or attempt:
                    raise UpstreamReadError("upstream closed the connection before answering") from None
            except BaseException:
                await conn.close()
                raise
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Connection, method: bytes, target: bytes, head: list,
                        body: bytes) -> Response:
        h = conn.h11
        data = h.send(h11.Request(method=method, target=target, headers=head))
        data += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        received_any = False
        try:
            await conn.stream.send_all(data)
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.stream.receive_some(READ_SIZE)
                    if not chunk and not received_any:
                        raise _StaleConnection()
                    received_any = True
                    h.receive_data(chunk)
                    continue
                if type(event) is h11.Response:
                    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                    return Response(event.status_code, headers, conn, self)
                if type(event) is h11.ConnectionClosed:
                    if not received_any:
                        raise _StaleConnection()
                    raise UpstreamReadError("upstream closed the connection before answering")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not received_any:
                raise _StaleConnection() from None
            raise UpstreamReadError(f"upstream connection failed: {type(exc).__name__}") from None
        except h11.RemoteProtocolError as exc:
            raise UpstreamReadError(f"upstream broke HTTP/1.1: {exc}") from None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()


class _StaleConnection(Exception):
    """A reused connection turned out closed before any response byte."""
