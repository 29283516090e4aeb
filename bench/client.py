"""A small HTTP/1.1 load client on raw trio sockets, for what wrk cannot do.

It sends pre-built request bytes over keep-alive connections and reads responses
with the least parsing that stays correct (content-length, chunked, or
close-delimited bodies). For streams it keeps every decoded body piece with the time
it arrived, and leaves all SSE/JSON parsing to :func:`analyse_stream`, after the
run, so that the client spends its CPU on the socket while the clock runs.

Every loop here is bounded by a count and a deadline, and only ever connects to
127.0.0.1.
"""

from __future__ import annotations

import json
import math
import re
import time

import attrs
import trio

HOST = "127.0.0.1"
SPIN_S = 0.0015
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)")
_TE_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked")
_CONN_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close")


class ProtocolError(Exception):
    pass


def build_request(port: int, method: str, path: str, headers: dict, body: bytes | None) -> bytes:
    """The request as bytes, built once and sent many times."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {HOST}:{port}"]
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class ChunkedDecoder:
    """Incremental ``transfer-encoding: chunked`` decoder; leftover bytes stay in ``buf``."""

    __slots__ = ("buf", "remaining", "state", "done")

    def __init__(self) -> None:
        self.buf = b""
        self.remaining = 0
        self.state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailers
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            state = self.state
            if state == 1:
                if not buf:
                    break
                take = buf[: self.remaining]
                out.append(take)
                buf = buf[len(take):]
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.state = 2
            elif state == 0:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                try:
                    size = int(buf[:i].split(b";")[0], 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {buf[:i][:40]!r}") from None
                buf = buf[i + 2:]
                if size == 0:
                    self.state = 3
                else:
                    self.remaining = size
                    self.state = 1
            elif state == 2:
                if len(buf) < 2:
                    break
                buf = buf[2:]
                self.state = 0
            else:
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 2:]
                if not line:
                    self.done = True
                    break
        self.buf = buf
        return b"".join(out)


@attrs.define
class StreamRecord:
    """One streamed response: when it was sent, and each body piece with its arrival time."""

    t_sent: float = 0.0
    status: int = 0
    t_head: float = 0.0
    pieces: list = attrs.field(factory=list)  # [(t, bytes)]
    t_end: float = 0.0
    head: bytes = b""  # the response head, lowercased
    complete: bool = False  # the body ended the way HTTP says it ends
    error: str | None = None


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1."""

    __slots__ = ("stream", "buf", "closed")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = b""
        self.closed = False

    @classmethod
    async def open(cls, port: int) -> "Conn":
        return cls(await trio.open_tcp_stream(HOST, port))

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()

    async def _recv(self) -> bytes:
        data = await self.stream.receive_some(262144)
        if not data:
            raise ProtocolError("connection closed by peer")
        return data

    async def _head(self) -> tuple[int, bytes]:
        buf = self.buf
        i = buf.find(b"\r\n\r\n")
        while i < 0:
            buf += await self._recv()
            i = buf.find(b"\r\n\r\n")
        head, self.buf = buf[: i + 2], buf[i + 4:]
        try:
            status = int(head[9:12])
        except ValueError:
            raise ProtocolError(f"bad status line {head[:40]!r}") from None
        if status == 100:
            return await self._head()
        return status, head.lower()

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request and read the whole response."""
        await self.stream.send_all(raw)
        status, head = await self._head()
        m = _CL.search(head)
        if m:
            n = int(m.group(1))
            buf = self.buf
            while len(buf) < n:
                buf += await self._recv()
            body, self.buf = buf[:n], buf[n:]
        elif _TE_CHUNKED.search(head):
            dec = ChunkedDecoder()
            parts = [dec.feed(self.buf)]
            while not dec.done:
                parts.append(dec.feed(await self._recv()))
            body, self.buf = b"".join(parts), dec.buf
        else:
            parts = [self.buf]
            while True:
                data = await self.stream.receive_some(262144)
                if not data:
                    break
                parts.append(data)
            body, self.buf = b"".join(parts), b""
            self.closed = True
        if _CONN_CLOSE.search(head):
            self.closed = True
        return status, body

    async def stream_request(self, raw: bytes, rec: StreamRecord, first: trio.Event | None = None) -> None:
        """Send one streaming request, recording each body piece as it arrives.

        ``first`` is set when the first body bytes arrive (the memory scenario waits on
        it to know a stream is really open end to end)."""
        now = time.perf_counter
        await self.stream.send_all(raw)
        status, head = await self._head()
        rec.status = status
        rec.head = head
        rec.t_head = now()
        pieces = rec.pieces
        if _TE_CHUNKED.search(head):
            dec = ChunkedDecoder()
            data = dec.feed(self.buf)
            if data:
                pieces.append((rec.t_head, data))
            while not dec.done:
                chunk = await self._recv()
                t = now()
                data = dec.feed(chunk)
                if data:
                    pieces.append((t, data))
                    if first is not None and not first.is_set():
                        first.set()
            self.buf = dec.buf
        else:
            m = _CL.search(head)
            left = int(m.group(1)) if m else math.inf
            if self.buf:
                pieces.append((rec.t_head, self.buf[: int(min(left, len(self.buf)))]))
                left -= len(pieces[-1][1])
            self.buf = b""
            while left > 0:
                data = await self.stream.receive_some(262144)
                if not data:
                    if m:
                        raise ProtocolError("connection closed mid-body")
                    break
                pieces.append((now(), data))
                left -= len(data)
                if first is not None and not first.is_set():
                    first.set()
            if not m:
                self.closed = True
        if _CONN_CLOSE.search(head):
            self.closed = True
        rec.t_end = now()
        rec.complete = True


# ---------------------------------------------------------------- closed loop


async def sequential(port: int, raw: bytes, count: int, seconds: float, min_count: int = 20) -> dict:
    """One request at a time on one keep-alive connection: latency samples (s)."""
    now = time.perf_counter
    lat: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    last_error = None
    conn = await Conn.open(port)
    deadline = now() + seconds
    try:
        with trio.move_on_after(seconds * 3 + 30):
            for i in range(count):
                if i >= min_count and now() > deadline:
                    break
                if conn.closed:
                    await conn.aclose()
                    conn = await Conn.open(port)
                t0 = now()
                try:
                    status, _ = await conn.request(raw)
                except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                    errors += 1
                    last_error = f"{type(exc).__name__}: {exc}"
                    conn.closed = True
                    continue
                t1 = now()
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
                    continue
                lat.append(t1 - t0)
    finally:
        await conn.aclose()
    return {"latencies": lat, "errors": errors, "statuses": statuses, "last_error": last_error}


# ---------------------------------------------------------------- open loop


async def open_loop(port: int, raw: bytes, rate: float, seconds: float, connections: int = 64,
                    drain_s: float = 10.0) -> dict:
    """Requests at a fixed rate whatever the server does; latency from the scheduled time.

    The wrk2 model: a fixed set of pre-opened keep-alive connections takes scheduled
    requests from a queue. A request that waits for a free connection waits on the
    clock, so measuring from the schedule (not from the send) charges every delay --
    the server's or this client's -- to the result (no coordinated omission), and a
    slow server cannot trigger a storm of new connections."""
    now = time.perf_counter
    count = max(1, int(rate * seconds))
    lat: list[float] = []
    state = {"answered": 0, "errors": 0, "busy": 0, "peak": 0, "last_error": None, "max_lag": 0.0,
             "reconnects": 0}
    conns = [await Conn.open(port) for _ in range(connections)]
    send, recv = trio.open_memory_channel(count)

    async def worker(i: int, recv) -> None:
        async with recv:
            async for t_sched in recv:
                state["busy"] += 1
                state["peak"] = max(state["peak"], state["busy"])
                try:
                    conn = conns[i]
                    if conn.closed:
                        await conn.aclose()
                        conn = conns[i] = await Conn.open(port)
                        state["reconnects"] += 1
                    status, _ = await conn.request(raw)
                    lat.append(now() - t_sched)
                    state["answered"] += 1
                    if status != 200:
                        state["errors"] += 1
                        state["last_error"] = f"HTTP {status}"
                except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
                    state["answered"] += 1
                    state["errors"] += 1
                    state["last_error"] = f"{type(exc).__name__}: {exc}"
                    conns[i].closed = True
                finally:
                    state["busy"] -= 1

    start = now() + 0.02
    interval = 1.0 / rate
    with trio.move_on_after(seconds + drain_s) as scope:
        async with trio.open_nursery() as nursery:
            for i in range(connections):
                nursery.start_soon(worker, i, recv.clone())
            await recv.aclose()
            async with send:
                for k in range(count):
                    t = start + k * interval
                    delay = t - now()
                    if delay > 0:
                        # epoll rounds its timeout up to whole ms: sleep short, then spin
                        # (yielding) for the rest, so a quiet schedule is not 1 ms late
                        if delay > SPIN_S:
                            await trio.sleep(delay - SPIN_S)
                        while now() < t:
                            await trio.lowlevel.checkpoint()
                    else:
                        state["max_lag"] = max(state["max_lag"], -delay)
                        if k % 16 == 0:
                            await trio.lowlevel.checkpoint()
                    send.send_nowait(t)
    if scope.cancelled_caught:
        state["errors"] += max(0, count - state["answered"])
        state["last_error"] = state["last_error"] or "requests still unanswered at the deadline"
    for conn in conns:
        await conn.aclose()
    return {"rate": rate, "sent": count, "latencies": lat, "errors": state["errors"],
            "connections": connections, "peak_busy": state["peak"], "reconnects": state["reconnects"],
            "schedule_lag_max_ms": state["max_lag"] * 1000, "last_error": state["last_error"],
            "seconds": seconds}


# ---------------------------------------------------------------- streams


async def one_stream(port: int, raw: bytes, timeout: float, first: trio.Event | None = None,
                     rec: StreamRecord | None = None) -> StreamRecord:
    """One streaming request on its own connection, bounded by ``timeout``."""
    rec = rec if rec is not None else StreamRecord(t_sent=time.perf_counter())
    conn = None
    try:
        with trio.move_on_after(timeout) as scope:
            conn = await Conn.open(port)
            rec.t_sent = time.perf_counter()
            await conn.stream_request(raw, rec, first)
        if scope.cancelled_caught:
            rec.error = "timeout"
    except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.t_end = rec.t_end or time.perf_counter()
        if first is not None and not first.is_set():
            first.set()
        if conn is not None:
            await conn.aclose()
    return rec


# ---------------------------------------------------------------- analysis


def sse_events(pieces: list) -> list[tuple[float, bytes]]:
    """Split a stream's body into SSE events, each stamped with the arrival time of the
    piece that completed it."""
    out = []
    buf = b""
    for t, data in pieces:
        buf += data.replace(b"\r\n", b"\n") if b"\r" in data else data
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                break
            out.append((t, buf[:i]))
            buf = buf[i + 2:]
    if buf.strip():
        out.append((pieces[-1][0] if pieces else 0.0, buf))
    return out


def _data(event: bytes) -> bytes:
    lines = [ln[5:].lstrip() if ln.startswith(b"data:") else None for ln in event.split(b"\n")]
    return b"\n".join(ln for ln in lines if ln is not None)


def analyse_stream(rec: StreamRecord) -> dict:
    """Content events (OpenAI chunks with text, Anthropic text deltas), their times, the
    text they carry, the usage seen and whether the stream ended properly."""
    text = []
    times = []
    usage = None
    terminal = False
    errors = []
    for t, ev in sse_events(rec.pieces):
        data = _data(ev)
        if not data:
            continue
        if data == b"[DONE]":
            terminal = True
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            errors.append(data[:80].decode(errors="replace"))
            continue
        if not isinstance(doc, dict):
            continue
        kind = doc.get("type")
        if kind == "content_block_delta":
            delta = doc.get("delta") or {}
            if delta.get("text"):
                text.append(delta["text"])
                times.append(t)
        elif kind == "message_start":
            u = (doc.get("message") or {}).get("usage")
            if u:
                usage = {**(usage or {}), **{k: v for k, v in u.items() if isinstance(v, int)}}
        elif kind == "message_delta":
            u = doc.get("usage")
            if u:
                usage = {**(usage or {}), **{k: v for k, v in u.items() if isinstance(v, int)}}
        elif kind == "message_stop":
            terminal = True
        elif kind == "error" or "error" in doc:
            errors.append(json.dumps(doc)[:200])
        else:
            for choice in doc.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
                    times.append(t)
            if doc.get("usage"):
                usage = doc["usage"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {
        "status": rec.status,
        "error": rec.error,
        "complete": rec.complete,
        "terminal": terminal,
        "events": len(times),
        "text": "".join(text),
        "ttft": (times[0] - rec.t_sent) if times else None,
        "gaps": gaps,
        "usage": usage,
        "stream_errors": errors,
        "duration": (rec.t_end - rec.t_sent) if rec.t_end else None,
    }


def header(rec: StreamRecord, name: bytes) -> str | None:
    m = re.search(rb"\r\n" + re.escape(name.lower()) + rb":[ \t]*([^\r\n]*)", rec.head)
    return m.group(1).decode("latin-1").strip() if m else None


def body_bytes(rec: StreamRecord) -> bytes:
    return b"".join(p for _, p in rec.pieces)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]
