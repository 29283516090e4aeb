"""A small keep-alive HTTP/1.1 client on trio and h11: the gateway's upstream transport.

Why not httpx: on the hot path the gateway needs exactly one thing -- send a POST to
a known origin and read the body as it arrives -- and httpx/httpcore spent a large
share of the gateway's CPU around it (pool scans that grow with open connections,
nested async generators per read, a thread-safe pool). This client keeps one idle
stack of connections per origin, reads with one ``receive_some`` per call, and
closes a connection at once when its response is abandoned, so a cancelled request
never leaves a half-read stream in the pool. ``bench/`` measures it against httpx2.

A request is written at most once. Every failure is one of two errors, decided here
and nowhere else:

* ``RequestNotSent`` -- no byte of the request was written: no free connection slot
  in time, DNS, connect, the proxy's CONNECT, or the TLS handshake failed. The
  upstream cannot have acted on it.
* ``RequestBroken`` -- the request was handed to the socket (perhaps only in part)
  and the exchange then failed: the peer closed before answering, reset, broke HTTP,
  or cut the body. The server may have read the request and started (and billed) a
  generation, so it is never sent again here; the caller decides what to do.

A pooled connection the server has closed is found before it is used: an idle socket
that polls readable holds an EOF, a reset or bytes nobody asked for, and is discarded
(one ``poll`` syscall per reuse). Idle connections older than ``keepalive_s`` are
dropped unused (upstreams close theirs after 5-60 s, and a write that races their
close is a ``RequestBroken``). The check cannot close the race of a server that
closes the connection while the request is on the wire; that case is a
``RequestBroken``, never a silent resend.

Whoever needs to know whether a call's bytes left -- the dispatcher, to charge nothing
for an attempt that never reached the upstream even when a deadline or a cancel, not
an error, ended it -- opens a ``WriteWatch`` around the call; the pool marks it the
moment it starts writing a request.

At most ``max_connections`` connections per origin are open; a request that finds
them all busy waits for one (in arrival order) up to ``connect_timeout``. A proxy
(explicit, or from the environment: ``providers/proxy.py``) is reached with CONNECT.
"""

from __future__ import annotations

import os
import select
import ssl
from collections import deque
from contextvars import ContextVar
from typing import Iterable, Mapping
from urllib.parse import urlsplit

import attrs
import h11
import trio

from providers.proxy import Proxy, ProxyError, choose_proxy, open_tunnel

READ_SIZE = 65536
_DEAD = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


class WriteWatch:
    """Whether any request made in this task (while the watch is open) began to be written."""

    __slots__ = ("written", "_token")

    def __init__(self) -> None:
        self.written = False

    @classmethod
    def open(cls) -> "WriteWatch":
        """A watch for a ``with`` block: this task's requests inside it mark it."""
        return cls()

    def __enter__(self) -> "WriteWatch":
        self._token = _WATCH.set(self)
        return self

    def __exit__(self, *_: object) -> None:
        _WATCH.reset(self._token)

    @staticmethod
    def mark() -> None:
        """A transport is about to write a request: the watch open in this task (if any) says so."""
        watch = _WATCH.get()
        if watch is not None:
            watch.written = True


_WATCH: ContextVar[WriteWatch | None] = ContextVar("tollhouse_write_watch", default=None)


class TransportError(Exception):
    """An upstream exchange failed; ``request_sent`` says whether any byte was written."""

    request_sent: bool = True


class RequestNotSent(TransportError):
    """No byte of the request was written (no slot, DNS, connect, proxy, TLS)."""

    request_sent = False


class PoolBusy(RequestNotSent):
    """Every connection slot to the origin stayed busy: the gateway's own limit
    (``max_connections``), which says nothing about the upstream."""


class RequestBroken(TransportError):
    """The request was written, at least in part, and the exchange then failed."""

    request_sent = True


@attrs.frozen
class PoolStatistics:
    """What an operator asks of a pool: connections open and idle, requests waiting for
    a slot, and connections opened and discarded as dead or expired since it started."""

    open: int
    idle: int
    waiting: int
    opened: int
    discarded: int


class _Connection:
    __slots__ = ("stream", "sock", "h11", "idle_since")

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=1024 * 1024)
        self.idle_since = 0.0

    def readable(self) -> bool:
        """An idle connection with anything to read (EOF, reset, stray bytes) is dead."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLPRI)
        return any(mask & _DEAD for _fd, mask in poller.poll(0))

    def close(self) -> None:
        """Close the socket at once (no TLS close_notify: the peer learns from the FIN)."""
        self.sock.close()


class Response:
    """A response whose head has arrived; the body is read with ``receive``.

    It holds its connection and its slot in the pool until the body is read to the
    end (the connection goes back to the pool) or ``aclose`` (it is closed)."""

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
                    raise RequestBroken(f"upstream broke HTTP/1.1: {exc}") from None
                if event is h11.NEED_DATA:
                    break
                if type(event) is h11.Data:
                    out.append(bytes(event.data))
                elif type(event) is h11.EndOfMessage:
                    self._done = True
                    break
                elif type(event) is h11.ConnectionClosed:
                    raise RequestBroken("upstream closed the connection mid-body")
            if out or self._done:
                if self._done:
                    self._release()
                return b"".join(out) if out else None
            try:
                data = await conn.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise RequestBroken(f"upstream connection failed mid-body: {type(exc).__name__}") from None
            conn.h11.receive_data(data)  # type: ignore[arg-type]  # h11 takes a bytearray too
        return None

    async def read(self, limit: int | None = None) -> bytes:
        """The whole (remaining) body; stops early at ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.receive()
            if chunk is None:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                return b"".join(parts)

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        pool = self._pool
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            if conn.h11.trailing_data == (b"", False):
                pool._put(conn)
            else:  # bytes past the response, or the EOF, already read: not reusable
                pool._discard(conn, stale=True)
        else:
            pool._discard(conn)
        pool._slots.release()

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it; at
        once, without a checkpoint, so that it also runs in a cancelled scope."""
        if not self._done:
            conn, self._conn = self._conn, None
            if conn is not None:
                self._pool._discard(conn)
                self._pool._slots.release()
        self._release()


class Pool:
    """Keep-alive connections to one origin (scheme://host:port).

    ``env`` (default ``os.environ``) is read here, once, for the proxy settings;
    an explicit ``proxy`` URL wins over it."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0, max_idle: int = 256,
                 ssl_context: ssl.SSLContext | None = None, keepalive_s: float = 15.0,
                 max_connections: int = 100, proxy: str | None = None,
                 env: Mapping[str, str] | None = None, max_body_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_body_bytes = max_body_bytes  # a whole (non-streamed) answer's bound
        if not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive, got {keepalive_s!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive integer, got {max_connections!r}")
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = (parts.netloc.rpartition("@")[2] or self.host).encode()
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.keepalive_s = keepalive_s
        self.max_connections = max_connections
        self.ssl_context = ssl_context or (ssl.create_default_context() if self.tls else None)
        self.proxy: Proxy | None = choose_proxy(parts.scheme, self.host, self.port, proxy,
                                                os.environ if env is None else env)
        self._idle: deque[_Connection] = deque()
        # one token per request holding a connection: with idle connections reused
        # before any is opened, open connections never exceed the cap
        self._slots = trio.Semaphore(max_connections)
        self._open = 0
        self.opened = 0
        self.discarded = 0

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(open=self._open, idle=len(self._idle),
                              waiting=self._slots.statistics().tasks_waiting,
                              opened=self.opened, discarded=self.discarded)

    # ------------------------------------------------------------ connections

    def _take_idle(self) -> _Connection | None:
        """The most recently used live idle connection; dead and expired ones are closed."""
        idle = self._idle
        if not idle:
            return None
        oldest_kept = trio.current_time() - self.keepalive_s
        while idle:
            conn = idle.pop()
            if conn.idle_since <= oldest_kept:
                # the stack is ordered by age: everything below is older still
                self._discard(conn, stale=True)
                while idle:
                    self._discard(idle.pop(), stale=True)
                return None
            if conn.readable():
                self._discard(conn, stale=True)
                continue
            return conn
        return None

    def _put(self, conn: _Connection) -> None:
        now = trio.current_time()
        conn.idle_since = now
        idle = self._idle
        while idle and idle[0].idle_since <= now - self.keepalive_s:
            self._discard(idle.popleft(), stale=True)
        if len(idle) < self.max_idle:
            idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection, stale: bool = False) -> None:
        conn.close()
        self._open -= 1
        self.discarded += stale

    async def _connect(self) -> _Connection:
        proxy = self.proxy
        via = f" through proxy {proxy.address}" if proxy is not None else ""
        host, port = (proxy.host, proxy.port) if proxy is not None else (self.host, self.port)
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(host, port)
                try:
                    if proxy is not None:
                        await open_tunnel(tcp, proxy, self.host, self.port)
                    stream: trio.abc.Stream = tcp
                    if self.tls:
                        stream = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.host,  # type: ignore[arg-type]  # set when tls
                                                https_compatible=True)
                        await stream.do_handshake()
                except BaseException:
                    tcp.socket.close()
                    raise
        except trio.TooSlowError:
            raise RequestNotSent(f"connecting to {self.host}:{self.port}{via} timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError, ProxyError) as exc:
            raise RequestNotSent(f"cannot connect to {self.host}:{self.port}{via}: {exc}") from None
        self.opened += 1
        self._open += 1
        return _Connection(stream, tcp.socket)

    async def _acquire_slot(self) -> None:
        try:
            self._slots.acquire_nowait()
            return
        except trio.WouldBlock:
            pass
        with trio.move_on_after(self.connect_timeout):
            await self._slots.acquire()
            return
        raise PoolBusy(f"all {self.max_connections} connections to {self.host}:{self.port} stayed busy "
                             f"for {self.connect_timeout:g}s")

    # ------------------------------------------------------------ requests

    async def request(self, method: str, url: str, headers: Iterable[tuple[str, str]], body: bytes) -> Response:
        """Send a request to ``url`` (on this pool's origin) once and wait for the
        response head. Raises ``RequestNotSent`` or ``RequestBroken``."""
        parts = urlsplit(url)
        target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
        head: list[tuple[str | bytes, bytes]] = [("host", self.authority), ("content-length", str(len(body)).encode())]
        head += [(k.encode(), v.encode()) for k, v in headers]
        await self._acquire_slot()
        try:
            conn = self._take_idle() or await self._connect()
        except BaseException:
            self._slots.release()
            raise
        try:
            return await self._exchange(conn, method.encode(), target, head, body)
        except BaseException:
            self._discard(conn)
            self._slots.release()
            raise

    async def _exchange(self, conn: _Connection, method: bytes, target: bytes, head: list,
                        body: bytes) -> Response:
        h = conn.h11
        try:
            data = h.send(h11.Request(method=method, target=target, headers=head))
            data += h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise RequestNotSent(f"the request cannot be sent as HTTP/1.1: {exc}") from None
        WriteWatch.mark()
        try:
            await conn.stream.send_all(data)
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    h.receive_data(await conn.stream.receive_some(READ_SIZE))  # type: ignore[arg-type]
                    continue
                if type(event) is h11.Response:
                    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                    return Response(event.status_code, headers, conn, self)
                if type(event) is h11.ConnectionClosed:
                    raise RequestBroken("upstream closed the connection before answering")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RequestBroken(f"upstream connection failed before answering: {type(exc).__name__}") from None
        except h11.RemoteProtocolError as exc:
            raise RequestBroken(f"upstream broke HTTP/1.1: {exc}") from None

    async def aclose(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())
        await trio.lowlevel.checkpoint()
