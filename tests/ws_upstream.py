"""A scripted WebSocket server for the suite: real sockets, wsproto frames.

Each accepted connection runs the test's script with a ``Peer`` that sends exactly the
frames the script asks for (fragments, pings, close codes, raw bytes) and reads what
the client sent, which the simulator (hypercorn) cannot be made to do.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, Ping, Pong, RejectConnection, RejectData, \
    Request, TextMessage
from wsproto.extensions import PerMessageDeflate


class Peer:
    """The server's side of one connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.SERVER)
        self.request: Request | None = None
        self.pongs: list[bytes] = []
        self.close_code: int | None = None

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        self.conn.receive_data(data or None)

    async def handshake(self, accept: bool = True, status: int = 401, body: bytes = b"") -> None:
        while self.request is None:
            await self._read()
            for event in self.conn.events():
                if isinstance(event, Request):
                    self.request = event
        if accept:
            offered = any("permessage-deflate" in e for e in self.request.extensions)
            await self.send(AcceptConnection(extensions=[PerMessageDeflate()] if offered else []))
        else:
            await self.send(RejectConnection(status_code=status, headers=[(b"content-length", b"%d" % len(body))],
                                             has_body=True))
            await self.send(RejectData(data=body, body_finished=True))

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def next_event(self, pong_too: bool = False) -> Event:
        """The client's next event; pings are answered, pongs recorded (and returned
        only when asked for)."""
        while True:
            for event in self.conn.events():
                if isinstance(event, Pong):
                    self.pongs.append(bytes(event.payload))
                    if pong_too:
                        return event
                    continue
                if isinstance(event, Ping):
                    await self.send(event.response())
                    continue
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
                return event
            await self._read()

    async def receive_text(self) -> str | None:
        """The client's next whole text message; None when it closed."""
        parts = []
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return None
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts)

    async def wait_pong(self) -> bytes:
        while not self.pongs:
            event = await self.next_event(pong_too=True)
            if isinstance(event, CloseConnection):
                raise AssertionError("the client closed instead of answering the ping")
        return self.pongs.pop(0)


Script = Callable[[Peer], Awaitable[None]]


class ScriptedServer:
    """Serves one script per connection, in order (the last one repeats)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.connections = 0
        self.peers: list[Peer] = []
        self.finished = 0  # connections whose script ended and whose socket is closed
        self._changed = trio.Event()
        self.url = ""

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/responses"
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        index = min(self.connections, len(self.scripts) - 1)
        self.connections += 1
        peer = Peer(stream)
        self.peers.append(peer)
        try:
            await self.scripts[index](peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: what the script waited for, in some tests
        finally:
            stream.socket.close()
            self.finished += 1
            self._changed.set()
            self._changed = trio.Event()

    async def wait_finished(self, n: int) -> None:
        while self.finished < n:
            await self._changed.wait()
