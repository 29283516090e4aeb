"""A Chat Completions upstream on a real socket whose streams wait at a gate.

Each streamed answer sends its first chunk, then waits until the test opens the gate
(``release()``), then sends the rest: a finish, the usage chunk and ``[DONE]``. So a
test can change the gateway's config while a stream is provably half way, without
sleeping. It counts what it served (``started``, ``models``) and the connections the
gateway closed (``closed``), to see a retired connection pool close.
"""

from __future__ import annotations

import json

import attrs
import h11
import trio

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 5


def _chunk(doc: dict) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def _stream(model: str) -> tuple[bytes, bytes]:
    base = {"id": "chatcmpl-gated", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    first = _chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "old "},
                                         "finish_reason": None}]})
    rest = (_chunk({**base, "choices": [{"index": 0, "delta": {"content": "target"}, "finish_reason": "stop"}]})
            + _chunk({**base, "choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS,
                                                       "completion_tokens": COMPLETION_TOKENS,
                                                       "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}})
            + b"data: [DONE]\n\n")
    return first, rest


@attrs.define
class GatedUpstream:
    port: int = 0
    started: int = 0  # streams that sent their first chunk
    models: list = attrs.field(factory=list)
    keys: list = attrs.field(factory=list)  # the bearer credential of each request
    closed: int = 0  # connections that ended
    _gate: trio.Event = attrs.field(factory=trio.Event)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, [listener])

    def release(self) -> None:
        self._gate.set()

    async def wait(self, test) -> None:
        while not test(self):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        headers: dict = {}
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    await self._answer(conn, stream, json.loads(body), headers)
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()
            self.closed += 1
            self._notify()

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, doc: dict, headers: dict) -> None:
        self.models.append(doc["model"])
        self.keys.append(headers.get("authorization", "").removeprefix("Bearer "))
        first, rest = _stream(doc["model"])
        head = conn.send(h11.Response(status_code=200, headers=[
            ("content-type", "text/event-stream"), ("transfer-encoding", "chunked")]))
        await stream.send_all(head + conn.send(h11.Data(data=first)))
        self.started += 1
        self._notify()
        await self._gate.wait()
        await stream.send_all(conn.send(h11.Data(data=rest)) + conn.send(h11.EndOfMessage()))
