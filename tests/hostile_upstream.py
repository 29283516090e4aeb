"""A hostile upstream on a raw trio socket: one ``mode`` per misbehaviour, in any family.

``HostileUpstream(mode, family)``; ``url = await nursery.start(upstream.serve)`` gives the
base URL (``http://127.0.0.1:PORT``: point ``openai_compat`` and ``openai`` providers at
``url + "/v1"``, ``anthropic`` and ``gemini`` at ``url``). Paths are not checked: the
family decides the wire, the request decides whole or streamed (``"stream": true`` in
the body; for ``gemini`` a ``streamGenerateContent`` path, SSE with ``alt=sse`` and a
streamed JSON array without). Families: ``openai_compat`` (Chat Completions), ``openai``
(Responses), ``anthropic`` (Messages), ``gemini`` (generateContent).

Modes (whole = a non-streaming request, stream = a streaming one):

``echo_key``
    Quotes the credential it received (``Authorization: Bearer``, ``x-api-key``,
    ``x-goog-api-key`` or ``?key=``) in the family's error shapes, as written, upper-cased,
    percent-encoded and inside the quoted header line (so JSON escapes it too), and in an
    ``x-echo-key`` response header. ``echo`` picks where: ``"status"`` (whole and stream:
    the family's error status and body -- OpenAI's 401 ``Incorrect API key provided``,
    Anthropic's 401 ``authentication_error``, Gemini's 400 ``API_KEY_INVALID``; override the
    status with ``echo_status``), ``"first_event"`` (stream: 200, the first event is the
    family's in-stream error, a server error: an auth error would retire the credential),
    ``"mid_stream"`` (stream: 200, a start and a text delta,
    then the in-stream error -- Responses follows it with ``response.failed`` -- then the
    body ends).
``endless_after_finish``
    Stream: a whole answer through the protocol's terminal event, then (from the same write
    on, so one read holds both) ``filler`` forever:
    ``"comments"`` (SSE comment frames of ``chunk_bytes``) or ``"events"`` (the family's
    harmless events: Chat empty chunks, Anthropic pings, Responses and Gemini repeats).
    Whole: the complete JSON, then whitespace forever (chunked).
``endless_body``
    Whole: a 200 JSON body that never ends (an unterminated string, chunked). Stream:
    text deltas forever, never a finish.
``finish_then_open``
    The whole answer (stream: through its terminal event), then neither the last chunk
    nor EOF: the connection stays open until the gateway closes it.
``garbage_sse``
    Stream: 200 ``text/event-stream``, a valid start and text, then undecodable frames
    (broken JSON, invalid UTF-8, NUL bytes, a JSON array where an object belongs), then
    EOF. Whole: a 200 ``application/json`` body that is HTML.
``close_idle_early``
    Answers normally on a keep-alive response (no ``Connection: close``), then closes the
    connection at once: a pooled connection the gateway reuses is already dead.
``huge_headers``
    A response head of ``header_bytes`` (default 1 MiB) of ``x-pad-N`` headers, then a
    normal answer; ``header_bytes=None`` sends headers forever.

Counters: ``requests``, ``connections``, ``closed`` (connections ended, by either side),
``bytes_sent`` (every byte written, head and body), ``keys`` (each credential received);
``await upstream.wait_for(pred)`` returns once ``pred(upstream)`` holds.
"""

from __future__ import annotations

import json
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import h11
import trio

MODES = ("echo_key", "endless_after_finish", "endless_body", "finish_then_open", "garbage_sse",
         "close_idle_early", "huge_headers")
FAMILIES = ("openai_compat", "openai", "anthropic", "gemini")
ECHOES = ("status", "first_event", "mid_stream")


@attrs.frozen
class Asked:
    """What one request asked for."""

    stream: bool
    sse: bool  # streamed as SSE (Gemini without ``alt=sse`` streams a JSON array)
    key: str  # the credential as received
    header: str  # the line it came in, as sent ("authorization: Bearer ...")


def echo_text(asked: Asked) -> str:
    """The key in every form an upstream might quote it."""
    key = asked.key
    return (f"Incorrect API key provided: {key}. Upper: {key.upper()}. Encoded: {quote(key, safe='')}. "
            f"Received {asked.header!r}.")


# ---------------------------------------------------------------- the families' wires
# Each event is (SSE event name or None, JSON document or raw data string).

class ChatWire:
    def _chunk(self, delta: dict, finish: str | None = None, **extra: Any) -> dict:
        return {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1700000000, "model": "hostile",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

    def start(self) -> list:
        return [(None, self._chunk({"role": "assistant", "content": ""}))]

    def delta(self, text: str) -> list:
        return [(None, self._chunk({"content": text}))]

    def finish(self) -> list:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return [(None, self._chunk({}, "stop")),
                (None, {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1700000000,
                        "model": "hostile", "choices": [], "usage": usage}),
                (None, "[DONE]")]

    def noise(self) -> list:
        return [(None, self._chunk({}))]

    def error_event(self, message: str) -> list:
        return [(None, {"error": {"message": message, "type": "server_error", "code": None}})]

    def error_status(self, message: str) -> tuple[int, dict]:
        return 401, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                               "code": "invalid_api_key"}}

    def whole(self, text: str) -> dict:
        return {"id": "chatcmpl-hostile", "object": "chat.completion", "created": 1700000000, "model": "hostile",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


class ResponsesWire:
    def __init__(self) -> None:
        self.seq = 0

    def _ev(self, kind: str, **fields: Any) -> tuple:
        self.seq += 1
        return kind, {"type": kind, "sequence_number": self.seq - 1, **fields}

    def _response(self, status: str, **fields: Any) -> dict:
        return {"id": "resp_hostile", "object": "response", "created_at": 1700000000, "status": status,
                "model": "hostile", "output": [], "usage": None, "error": None, **fields}

    def start(self) -> list:
        self.seq = 0
        return [self._ev("response.created", response=self._response("in_progress"))]

    def delta(self, text: str) -> list:
        return [self._ev("response.output_text.delta", item_id="msg_hostile", output_index=0, content_index=0,
                         delta=text)]

    def finish(self) -> list:
        return [self._ev("response.completed", response=self.whole("hi"))]

    def noise(self) -> list:
        return self.delta("")

    def error_event(self, message: str) -> list:
        err = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        return [self._ev("error", error=err),
                self._ev("response.failed", response=self._response("failed", error={
                    "code": "server_error", "message": message}))]

    def error_status(self, message: str) -> tuple[int, dict]:
        return ChatWire().error_status(message)

    def whole(self, text: str) -> dict:
        return self._response("completed", output=[{
            "type": "message", "id": "msg_hostile", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            usage={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})


class AnthropicWire:
    def start(self) -> list:
        message = {"id": "msg_hostile", "type": "message", "role": "assistant", "model": "hostile", "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
        return [("message_start", {"type": "message_start", "message": message}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})]

    def delta(self, text: str) -> list:
        return [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": text}})]

    def finish(self) -> list:
        return [("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                   "usage": {"output_tokens": 2}}),
                ("message_stop", {"type": "message_stop"})]

    def noise(self) -> list:
        return [("ping", {"type": "ping"})]

    def error_event(self, message: str) -> list:
        return [("error", {"type": "error", "error": {"type": "api_error", "message": message}})]

    def error_status(self, message: str) -> tuple[int, dict]:
        return 401, {"type": "error", "error": {"type": "authentication_error", "message": message},
                     "request_id": "req_hostile"}

    def whole(self, text: str) -> dict:
        return {"id": "msg_hostile", "type": "message", "role": "assistant", "model": "hostile",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 2}}


class GeminiWire:
    def _chunk(self, text: str, finish: str | None = None) -> dict:
        candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "modelVersion": "hostile", "responseId": "hostile",
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2 if finish else 1,
                                  "totalTokenCount": 5 if finish else 4}}

    def start(self) -> list:
        return [(None, self._chunk(""))]

    def delta(self, text: str) -> list:
        return [(None, self._chunk(text))]

    def finish(self) -> list:
        return [(None, self._chunk("", "STOP"))]  # Gemini's terminal is the end of body after it

    def noise(self) -> list:
        return self.finish()

    def error_event(self, message: str) -> list:
        return [(None, {"error": {"code": 500, "message": message, "status": "INTERNAL"}})]

    def error_status(self, message: str) -> tuple[int, dict]:
        return 400, {"error": {"code": 400, "message": f"API key not valid. Please pass a valid API key. {message}",
                               "status": "INVALID_ARGUMENT", "details": [{
                                   "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                   "domain": "googleapis.com", "metadata": {"key": message}}]}}

    def whole(self, text: str) -> dict:
        return self._chunk(text, "STOP")


WIRES: dict[str, Callable[[], Any]] = {"openai_compat": ChatWire, "openai": ResponsesWire,
                                       "anthropic": AnthropicWire, "gemini": GeminiWire}


def _json(doc: Any) -> bytes:
    return doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()


class _Framing:
    """Events to bytes: SSE frames, or the elements of a streamed JSON array."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.first = True

    def frame(self, event: tuple) -> bytes:
        name, doc = event
        if self.sse:
            return (b"event: %s\n" % name.encode() if name else b"") + b"data: " + _json(doc) + b"\n\n"
        out = (b"[" if self.first else b",\r\n") + _json(doc)
        self.first = False
        return out

    def close(self) -> bytes:
        return b"" if self.sse else (b"[]" if self.first else b"]")

    def filler(self, size: int) -> bytes:
        return b": " + b"x" * max(size - 3, 0) + b"\n" if self.sse else b" " * size


@attrs.define(eq=False)
class HostileUpstream:
    mode: str
    family: str
    echo: str = "status"  # echo_key: "status", "first_event" or "mid_stream"
    echo_status: int | None = None  # echo_key "status": this status instead of the family's own
    filler: str = "comments"  # endless_after_finish: "comments" or "events"
    chunk_bytes: int = 16 * 1024  # endless modes: bytes per write
    header_bytes: int | None = 1024 * 1024  # huge_headers: None for headers without end
    requests: int = 0
    connections: int = 0
    closed: int = 0
    bytes_sent: int = 0
    keys: list[str] = attrs.field(factory=list)
    url: str = ""
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        if self.mode not in MODES or self.family not in FAMILIES or self.echo not in ECHOES:
            raise ValueError(f"unknown mode, family or echo: {self.mode!r}, {self.family!r}, {self.echo!r}")

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.url = "http://127.0.0.1:%d" % listener.socket.getsockname()[1]
        task_status.started(self.url)
        await trio.serve_listeners(self._handle, [listener])

    async def wait_for(self, pred: Callable[["HostileUpstream"], bool]) -> None:
        while not pred(self):
            await self._changed.wait()

    def _count(self, **deltas: int) -> None:
        for name, n in deltas.items():
            setattr(self, name, getattr(self, name) + n)
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ connection

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._count(connections=1)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                asked = await self._read(stream, conn)
                if asked is None:
                    return
                self._count(requests=1)
                self.keys.append(asked.key)
                keep = await self._answer(stream, conn, asked)
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)
            self._count(closed=1)

    async def _read(self, stream: trio.SocketStream, conn: h11.Connection) -> Asked | None:
        request = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._asked(request, body)

    def _asked(self, request: h11.Request, body: bytes) -> Asked:
        target = request.target.decode("latin-1")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        key, header = "", ""
        for name in ("authorization", "x-api-key", "x-goog-api-key"):
            if name in headers:
                value = headers[name]
                key = value[7:] if name == "authorization" and value[:7].lower() == "bearer " else value
                header = f"{name}: {value}"
                break
        query = parse_qs(urlsplit(target).query)
        if not key and query.get("key"):
            key, header = query["key"][0], f"?key={query['key'][0]}"
        if self.family == "gemini":
            stream = "streamGenerateContent" in target
            sse = query.get("alt") == ["sse"]
        else:
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                doc = {}
            stream = isinstance(doc, dict) and doc.get("stream") is True
            sse = True
        return Asked(stream, sse, key, header)

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        if data:
            await stream.send_all(data)
            self._count(bytes_sent=len(data))

    async def _head(self, stream: trio.SocketStream, conn: h11.Connection, status: int, content_type: str,
                    extra: list | None = None, length: int | None = None) -> None:
        headers = [("content-type", content_type), *(extra or [])]
        headers.append(("content-length", str(length)) if length is not None else ("transfer-encoding", "chunked"))
        await self._send(stream, conn.send(h11.Response(status_code=status, headers=headers)))

    async def _data(self, stream: trio.SocketStream, conn: h11.Connection, data: bytes) -> None:
        if data:
            await self._send(stream, conn.send(h11.Data(data=data)))

    async def _end(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        await self._send(stream, conn.send(h11.EndOfMessage()))

    @staticmethod
    async def _until_closed(stream: trio.SocketStream) -> None:
        while await stream.receive_some(65536):
            pass

    # ------------------------------------------------------------ answers

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection, asked: Asked) -> bool:
        """Answer one request in this mode; False when the connection must not be reused."""
        wire = WIRES[self.family]()
        framing = _Framing(asked.sse)
        stream_type = "text/event-stream" if asked.sse else "application/json"
        answer = [*wire.start(), *wire.delta("hi"), *wire.finish()]
        mode = self.mode
        if mode == "echo_key":
            return await self._echo(stream, conn, asked, wire, framing)
        if mode == "huge_headers":
            return await self._huge_headers(stream, conn, asked, wire, framing, answer)
        if mode == "garbage_sse":
            if not asked.stream:
                body = b"<html><body>502 Bad Gateway</body></html>"
                await self._head(stream, conn, 200, "application/json", length=len(body))
                await self._data(stream, conn, body)
                await self._end(stream, conn)
                return True
            await self._head(stream, conn, 200, "text/event-stream")
            await self._data(stream, conn, b"".join(framing.frame(ev) for ev in [*wire.start(), *wire.delta("hi")]))
            for junk in (b'data: {"choices": [{"delta": \n\n', b"data: \xff\xfe\xfd not utf-8\n\n",
                         b"event: \x00\x00\ndata: \x00\n\n", b"data: [1, 2, 3]\n\n", b"data: null\n\n",
                         b"data\n\n:::\n\n"):
                await self._data(stream, conn, junk)
            await self._end(stream, conn)
            return True
        if mode == "endless_body":
            if asked.stream:
                await self._head(stream, conn, 200, stream_type)
                await self._data(stream, conn, b"".join(framing.frame(ev) for ev in wire.start()))
                text = "x" * self.chunk_bytes
                while True:
                    await self._data(stream, conn, b"".join(framing.frame(ev) for ev in wire.delta(text)))
            whole = json.dumps(wire.whole("hi"))
            await self._head(stream, conn, 200, "application/json")
            await self._data(stream, conn, whole[:-1].encode() + b', "padding": "')
            while True:
                await self._data(stream, conn, b"x" * self.chunk_bytes)
        if not asked.stream:
            body = json.dumps(wire.whole("hi")).encode()
            if mode == "close_idle_early":
                await self._head(stream, conn, 200, "application/json", length=len(body))
                await self._data(stream, conn, body)
                await self._end(stream, conn)
                return False
            await self._head(stream, conn, 200, "application/json")
            await self._data(stream, conn, body)
            if mode == "endless_after_finish":
                while True:
                    await self._data(stream, conn, b" " * self.chunk_bytes)
            await self._until_closed(stream)  # finish_then_open
            return False
        await self._head(stream, conn, 200, stream_type)
        if mode == "endless_after_finish":  # the first filler in the same write as the end
            while True:
                if self.filler == "events":
                    chunk = b"".join(framing.frame(ev) for ev in wire.noise())
                else:
                    chunk = framing.filler(self.chunk_bytes)
                await self._data(stream, conn, b"".join(framing.frame(ev) for ev in answer) + chunk)
                answer = []
        await self._data(stream, conn, b"".join(framing.frame(ev) for ev in answer))
        if mode == "close_idle_early":
            await self._data(stream, conn, framing.close())
            await self._end(stream, conn)
            return False
        await self._data(stream, conn, framing.close())
        await self._until_closed(stream)  # finish_then_open
        return False

    async def _echo(self, stream: trio.SocketStream, conn: h11.Connection, asked: Asked, wire: Any,
                    framing: _Framing) -> bool:
        message = echo_text(asked)
        echo_header = [("x-echo-key", asked.key), ("www-authenticate", f'Bearer error="invalid_token" {asked.key}')]
        if not asked.stream or self.echo == "status":
            status, doc = wire.error_status(message)
            body = json.dumps(doc).encode()
            await self._head(stream, conn, self.echo_status or status, "application/json", echo_header, len(body))
            await self._data(stream, conn, body)
            await self._end(stream, conn)
            return True
        events = wire.error_event(message)
        if self.echo == "mid_stream":
            events = [*wire.start(), *wire.delta("hi"), *events]
        await self._head(stream, conn, 200, "text/event-stream" if asked.sse else "application/json", echo_header)
        await self._data(stream, conn, b"".join(framing.frame(ev) for ev in events) + framing.close())
        await self._end(stream, conn)
        return True

    async def _huge_headers(self, stream: trio.SocketStream, conn: h11.Connection, asked: Asked, wire: Any,
                            framing: _Framing, answer: list) -> bool:
        await self._send(stream, b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n" % (
            b"text/event-stream" if asked.stream and asked.sse else b"application/json"))
        pad = b"x" * 8000
        sent, n = 0, 0
        while self.header_bytes is None or sent < self.header_bytes:
            line = b"x-pad-%d: %s\r\n" % (n, pad)
            await self._send(stream, line)
            sent, n = sent + len(line), n + 1
        body = (b"".join(framing.frame(ev) for ev in answer) + framing.close() if asked.stream
                else json.dumps(wire.whole("hi")).encode())
        await self._send(stream, b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        return False
