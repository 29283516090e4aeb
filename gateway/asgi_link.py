"""The dispatcher's view of an ASGI HTTP exchange, and the body reader with its limits."""

from __future__ import annotations

import math

import trio

from gateway.disconnect import EXTENSION, Disconnect
from protocols.errors import PayloadTooLarge, RequestTimeout


class AsgiLink:
    """Sends the response; ``wait_disconnect`` returns when the client goes away (and
    ``disconnect``, when the server offers it, says so without a waiting task).

    ``started`` is set before the head is handed to the server (from then on the client
    may have it); ``head_sent`` once the server took it whole. A head cut short by a
    cancel leaves the server expecting a head still: no body follows it (the exchange
    is lost, and the server closes the connection)."""

    __slots__ = ("receive", "send", "started", "head_sent", "ended", "disconnect")

    def __init__(self, receive, send, disconnect: Disconnect | None = None) -> None:
        self.receive = receive
        self.send = send
        self.started = False
        self.head_sent = False
        self.ended = False
        self.disconnect = disconnect  # the server's hook, when it offers one (``gateway.disconnect``)

    @classmethod
    def of(cls, scope, receive, send) -> "AsgiLink":
        """The link of an ASGI exchange, with the server's disconnect hook if its scope has one."""
        return cls(receive, send, scope.get("extensions", {}).get(EXTENSION))

    async def start(self, status: int, headers: list) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.head_sent = True

    async def write(self, data: bytes) -> None:
        if self.head_sent:
            await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.ended = True
        if self.head_sent:
            await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def wait_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


async def read_body(scope, receive, limit: int, timeout_s: float = math.inf) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes and (408)
    a body not received whole within ``timeout_s``.

    The deadline is a total one: the server's own read timeout restarts at every byte,
    so a body trickled one byte at a time would otherwise hold its connection (and the
    request's task) for as long as the client likes.
    """
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = 0
            if declared > limit:
                raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit} bytes.")
    chunks = []
    size = 0
    with trio.move_on_after(timeout_s) as deadline:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
    if deadline.cancelled_caught:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s; "
                             f"{size} bytes were received.")
    return b"".join(chunks)
