"""Test servers on raw trio sockets: an HTTP/1.1 upstream that counts what reaches it,
and a CONNECT proxy. Both run in the test's nursery on 127.0.0.1."""

from __future__ import annotations

import json
from functools import partial
from typing import Callable

import attrs
import h11
import trio
import trio.testing

# (connection number, request number on that connection, body) -> (status, body) or
# (status, body, content type), or None to close the connection having read the
# request, without answering
Answer = Callable[[int, int, bytes], "tuple[int, bytes] | tuple[int, bytes, str] | None"]


def ok(_conn: int, _n: int, _body: bytes) -> tuple[int, bytes]:
    return 200, b"ok"


def chat_completion(_conn: int, _n: int, _body: bytes) -> tuple[int, bytes]:
    """A Chat Completions answer, whatever was asked."""
    doc = {"id": "chatcmpl-raw", "object": "chat.completion", "created": 1700000000, "model": "raw",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    return 200, json.dumps(doc).encode()


@attrs.define
class RawUpstream:
    """Counts requests per connection (``requests[i]`` for the i-th connection accepted)."""

    answer: Answer = ok
    requests: list[int] = attrs.field(factory=list)
    bodies: list[bytes] = attrs.field(factory=list)
    heads: list[tuple[str, dict]] = attrs.field(factory=list)  # each request's target and headers
    idle: set = attrs.field(factory=set)
    port: int = 0

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, [listener])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close_idle(self) -> int:
        """Close every connection that is waiting for its next request, as upstreams do
        with keep-alive connections idle past their limit (once every task has settled)."""
        await trio.testing.wait_all_tasks_blocked()
        streams, self.idle = list(self.idle), set()
        for stream in streams:
            await stream.aclose()
        return len(streams)

    async def _handle(self, stream: trio.SocketStream) -> None:
        index = len(self.requests)
        self.requests.append(0)
        h = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._read_request(stream, h)
                if request is None:
                    return
                self.requests[index] += 1
                self.bodies.append(request)
                reply = self.answer(index, self.requests[index], request)
                if reply is None:
                    return
                status, body, content_type = (*reply, "application/json")[:3]
                await stream.send_all(h.send(h11.Response(status_code=status, headers=[
                    ("content-type", content_type), ("content-length", str(len(body)))]))
                    + h.send(h11.Data(data=body)) + h.send(h11.EndOfMessage()))
                h.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.idle.discard(stream)
            await trio.aclose_forcefully(stream)

    async def _read_request(self, stream: trio.SocketStream, h: h11.Connection) -> bytes | None:
        body = []
        self.idle.add(stream)
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                h.receive_data(data)
                continue
            self.idle.discard(stream)
            if type(event) is h11.ConnectionClosed:
                return None
            if type(event) is h11.Request:
                self.heads.append((event.target.decode(), {k.decode(): v.decode() for k, v in event.headers}))
            if type(event) is h11.Data:
                body.append(bytes(event.data))
            elif type(event) is h11.EndOfMessage:
                return b"".join(body)


@attrs.define
class ConnectProxy:
    """An HTTP CONNECT proxy: records each tunnel's target and Proxy-Authorization,
    answers ``refuse`` (a status) instead of tunnelling when it is set."""

    tunnels: list[tuple[str, str | None]] = attrs.field(factory=list)
    refuse: int | None = None
    port: int = 0

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listener.socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, [listener])

    async def _handle(self, client: trio.SocketStream) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                data = await client.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ")
            fields = dict(line.split(": ", 1) for line in lines[1:])
            auth = next((v for k, v in fields.items() if k.lower() == "proxy-authorization"), None)
            self.tunnels.append((target, auth))
            if method != "CONNECT" or self.refuse is not None:
                await client.send_all(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % (self.refuse or 405))
                return
            host, _, port = target.rpartition(":")
            upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
            await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            async with upstream, trio.open_nursery() as nursery:
                if rest:
                    await upstream.send_all(rest)
                nursery.start_soon(partial(_pipe, client, upstream, nursery.cancel_scope))
                nursery.start_soon(partial(_pipe, upstream, client, nursery.cancel_scope))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        finally:
            await trio.aclose_forcefully(client)


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream, scope: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        scope.cancel()
