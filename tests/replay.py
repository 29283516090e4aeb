"""A recorded upstream on a real socket: serves fixture bytes, whole, cut, or paused.

Every request gets the same answer: ``status`` and ``body`` sent chunked. With
``cut_at`` the body ends cleanly (a proper last chunk) after that many bytes, as an
upstream that closes its stream early; with ``pause_at`` it sends that many bytes and
then waits, sending nothing more, until the connection is closed by the gateway.
With ``tail`` it sends the body and then ``tail`` again and again, without end, until
the gateway hangs up (``sent`` counts the bytes it wrote).
"""

from __future__ import annotations

from functools import partial

import attrs
import h11
import trio


@attrs.define
class Replay:
    body: bytes
    content_type: str = "text/event-stream"
    status: int = 200
    cut_at: int | None = None
    pause_at: int | None = None
    tail: bytes | None = None
    requests: int = 0
    sent: int = 0
    paused: trio.Event = attrs.field(factory=trio.Event)
    closed: trio.Event = attrs.field(factory=trio.Event)  # a paused answer's connection was closed
    url: str = ""

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = "http://127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(partial(_handle, self), listeners)


async def _handle(replay: Replay, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                replay.requests += 1
                await _answer(replay, conn, stream)
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


async def _answer(replay: Replay, conn: h11.Connection, stream: trio.SocketStream) -> None:
    body = replay.body
    end = len(body) if replay.cut_at is None else replay.cut_at
    if replay.pause_at is not None:
        end = replay.pause_at
    head = conn.send(h11.Response(status_code=replay.status, headers=[
        ("content-type", replay.content_type), ("transfer-encoding", "chunked")]))
    await stream.send_all(head + conn.send(h11.Data(data=body[:end])))
    replay.sent += end
    if replay.tail is not None:
        piece = conn.send(h11.Data(data=replay.tail))
        try:
            while True:
                await stream.send_all(piece)
                replay.sent += len(replay.tail)
        finally:
            replay.closed.set()
    if replay.pause_at is not None:
        replay.paused.set()
        try:
            while await stream.receive_some(65536):
                pass
        finally:
            replay.closed.set()
        return
    await stream.send_all(conn.send(h11.EndOfMessage()))
