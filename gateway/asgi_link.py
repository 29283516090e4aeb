"""The dispatcher's view of an ASGI HTTP exchange, and the body reader with its limit."""

from __future__ import annotations

from protocols.errors import PayloadTooLarge


class AsgiLink:
    """Sends the response; ``wait_disconnect`` returns when the client goes away."""

    __slots__ = ("receive", "send", "started", "ended")

    def __init__(self, receive, send) -> None:
        self.receive = receive
        self.send = send
        self.started = False
        self.ended = False

    async def start(self, status: int, headers: list) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        self.ended = True
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def wait_disconnect(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


async def read_body(scope, receive, limit: int) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes."""
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
    return b"".join(chunks)
