"""A client's Responses WebSocket: its messages in, its turns' events out.

``ClientSocket`` wraps one ASGI websocket connection: ``pump`` reads the client's
messages into a small inbox and notices the close; ``send_json`` sends one text frame
(nothing once the client is gone: hypercorn drops sends after a close). ``TurnLink`` is
one turn as the dispatcher's ``ClientLink``: the dispatcher writes SSE bytes (the
upstream's own on a pass-through, else the encoder's), and each event's data leaves as
one text frame -- the API's WebSocket mode sends the very objects its SSE stream
carries.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from gateway.disconnect import Disconnect
from protocols.sse import SSEDecoder

#: messages a client may queue while a turn runs (turns are answered one at a time)
INBOX_SIZE = 8


class ClientSocket:
    """One accepted client WebSocket."""

    def __init__(self, receive, send) -> None:
        self._receive = receive
        self._send = send
        self.gone = trio.Event()
        self.disconnect = Disconnect()  # fired with ``gone``: a turn hears it without a waiting task
        self.close_code: int | None = None
        self._inbox_send, self.inbox = trio.open_memory_channel[str | bytes](INBOX_SIZE)
        self.last: Any = None  # the connection's latest response (gateway.conversation.LastResponse)

    async def pump(self) -> None:
        """Read the client's messages until it closes; a client that queues more than
        ``INBOX_SIZE`` turns behind the running one waits (TCP pushes back)."""
        async with self._inbox_send:
            while True:
                message = await self._receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    self.close_code = message.get("code")
                    self.gone.set()
                    self.disconnect.fire()
                    return
                if kind == "websocket.receive":
                    data = message.get("text")
                    await self._inbox_send.send(data if data is not None else message.get("bytes") or b"")

    async def send_json(self, doc: dict) -> None:
        await self.send_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False))

    async def send_text(self, text: str) -> None:
        if not self.gone.is_set():
            await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.gone.is_set():
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


class TurnLink:
    """One turn of a ``ClientSocket``, as the dispatcher's ``ClientLink``."""

    __slots__ = ("socket", "sse", "started", "ended", "frames")

    def __init__(self, socket: ClientSocket) -> None:
        self.socket = socket
        self.sse = SSEDecoder()
        self.started = False
        self.ended = False
        self.frames = 0  # events sent to the client

    async def start(self, status: int, headers: list) -> None:
        self.started = True  # a WebSocket turn has no status line: its events follow

    async def write(self, data: bytes) -> None:
        await self._events(self.sse.feed(data))

    async def end(self, data: bytes = b"") -> None:
        self.ended = True
        await self._events([*self.sse.feed(data), *self.sse.close()])

    async def wait_disconnect(self) -> None:
        await self.socket.gone.wait()  # unused by the dispatcher: ``disconnect`` is always there

    @property
    def disconnect(self) -> Disconnect:
        return self.socket.disconnect

    async def _events(self, events: list) -> None:
        for event in events:
            data = event.data
            if data is None or data == b"[DONE]":
                continue
            self.frames += 1
            await self.socket.send_text(data.decode("utf-8", "replace"))
