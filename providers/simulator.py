"""A simulated upstream: a real HTTP server that speaks the providers' protocols.

It is the embedded default upstream (so the gateway works with no network) and the
upstream of the test suite. Each protocol is a ``SimProtocol`` entry: how to read a
request off the wire and how to render answers and errors, reusing the protocol
modules' own codecs. The answer itself comes from ``sim_script``; faults are applied
here. The server counts in-flight responses and offers ``wait_idle()`` so a test can
prove that the gateway closed an upstream stream without sleeping. The Responses
WebSocket mode (``sim_websocket``) is served on the same port; it counts its
connections (``websocket_connections`` opened, ``websocket_open`` now) and records
each turn (``ws_turns``) beside the ``bodies`` and ``reported`` usage both sides keep.
"""

from __future__ import annotations

import itertools
import os
import json
import logging
import re
from collections import deque
from functools import partial
from importlib import resources
from typing import Any, Callable
from urllib.parse import parse_qs

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from protocols import anthropic_messages, openai_chat
from protocols import gemini, openai_responses
from protocols.errors import GatewayError, classify_upstream
from protocols.validate import load_json_object
from providers.sim_count import COUNTS, SimCount
from providers.sim_script import Fault, answer, base_model, fault_for
from providers.sim_thinking import Signer, check_replayed, wants_thinking, with_thinking
from providers.sim_websocket import SimTurn, serve_socket

log = logging.getLogger("tollhouse.simulator")

_REJECTION_BODIES = {
    "azure": ("error-400-azure-unknown-parameter-stream_options.json", 400),
    "openai": ("error-400-openai-stream_options-requires-stream.json", 400),
    "vllm": ("error-400-vllm-stream_options-extra-forbidden.json", 400),
    "mistral": ("error-422-mistral-stream_options-extra-forbidden.json", 422),
}
_ERROR_MESSAGES = {429: "Rate limit reached for requests", 401: "Incorrect API key provided",
                   503: "The server is overloaded", 529: "Overloaded", 500: "The server had an error"}


class SimulatedDisconnect(Exception):
    """Raised inside the ASGI app to make the server drop the connection mid-body."""


@attrs.frozen
class SimProtocol:
    """How the simulator speaks one protocol."""

    name: str
    path: re.Pattern
    parse: Callable[[re.Match, dict, dict], Any]  # (match, query, body) -> UnifiedRequest
    format_response: Callable
    format_error: Callable
    encoder: Callable  # (req, model) -> StreamEncoder
    key_header: Callable[[dict, dict], str]  # (headers, query) -> credential presented
    wait_in_body: bool = False  # a 429's wait goes in the error body (Gemini RetryInfo), not headers


def _bearer(headers: dict, query: dict) -> str:
    value = headers.get("authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else value


PROTOCOLS: list[SimProtocol] = [
    SimProtocol(
        name=openai_chat.NAME,
        path=re.compile(r"^(?:/v1)?/chat/completions$"),
        parse=lambda m, q, doc: openai_chat.parse_request(doc),
        format_response=openai_chat.format_response,
        format_error=openai_chat.format_error,
        encoder=openai_chat.StreamEncoder,
        key_header=_bearer,
    ),
    SimProtocol(
        name=openai_responses.NAME,
        path=re.compile(r"^(?:/v1)?/responses$"),
        parse=lambda m, q, doc: openai_responses.parse_request(doc),
        format_response=openai_responses.format_response,
        format_error=openai_responses.format_error,
        encoder=openai_responses.StreamEncoder,
        key_header=_bearer,
    ),
    SimProtocol(
        name=anthropic_messages.NAME,
        path=re.compile(r"^/v1/messages$"),
        parse=lambda m, q, doc: anthropic_messages.parse_request(doc),
        format_response=anthropic_messages.format_response,
        format_error=anthropic_messages.format_error,
        encoder=anthropic_messages.StreamEncoder,
        key_header=lambda headers, query: headers.get("x-api-key", ""),
    ),
    SimProtocol(
        name=gemini.NAME,
        path=re.compile(r"^/(v1beta|v1)/models/(?P<model>[^:]+):(?P<method>generateContent|streamGenerateContent)$"),
        parse=lambda m, q, doc: gemini.parse_request(
            doc, model=m["model"], stream=m["method"] == "streamGenerateContent", sse=q.get("alt") == "sse"),
        format_response=gemini.format_response,
        format_error=gemini.format_error,
        encoder=partial(gemini.StreamEncoder, owns_stream=True),
        key_header=lambda headers, query: headers.get("x-goog-api-key") or query.get("key", ""),
        wait_in_body=True,
    ),
]


def register(protocol: SimProtocol) -> None:
    """Add a protocol to the simulator (each protocol module's simulator adapter calls this)."""
    PROTOCOLS.append(protocol)


class Simulator:
    def __init__(self, tokens_per_second: float = 0.0) -> None:
        self.tokens_per_second = tokens_per_second
        self.key_faults: dict[str, Fault] = {}
        self.in_flight = 0
        self.requests = 0
        self.requests_by_key: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.traceparents: deque[str] = deque(maxlen=1024)  # the trace context of the latest requests and handshakes that had one
        self.reported: list = []  # the usage each answer reported, in order
        self.streams_sent = 0  # streams whose every event has been written
        self.websocket_connections = 0  # WebSocket connections accepted, in all
        self.websocket_open = 0  # WebSocket connections open now
        self.ws_turns: list[SimTurn] = []  # every response.create received, in order
        self.counts: list[tuple[str, dict]] = []  # every counting request: (protocol, body)
        self.signer = Signer()  # signs its thinking per family, checks what comes back
        self._changed = trio.Event()
        self._ids = itertools.count(1)
        self._run = os.urandom(4).hex()
        self.url: str | None = None

    # ------------------------------------------------------------ observation

    def _bump(self, delta: int) -> None:
        self.in_flight += delta
        self._notify()

    async def wait_idle(self) -> None:
        """Return once no response is in flight."""
        while self.in_flight:
            await self._changed.wait()

    async def wait_streams_sent(self, n: int) -> None:
        """Return once ``n`` streams have had all their events written."""
        while self.streams_sent < n:
            await self._changed.wait()

    async def wait_requests(self, n: int) -> None:
        """Return once at least ``n`` requests have arrived."""
        while self.requests < n:
            await self._changed.wait()

    async def wait_websocket_open(self, n: int) -> None:
        """Return once exactly ``n`` WebSocket connections are open."""
        while self.websocket_open != n:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ the WebSocket side's bookkeeping

    def socket_opened(self) -> None:
        self.websocket_connections += 1
        self.websocket_open += 1
        self._notify()

    def socket_closed(self) -> None:
        self.websocket_open -= 1
        self._notify()

    def turn_started(self, key: str) -> None:
        """A WebSocket turn counts as a request, as an HTTP one does."""
        self.requests += 1
        self.requests_by_key[key] = self.requests_by_key.get(key, 0) + 1
        self._bump(+1)

    def turn_ended(self) -> None:
        self._bump(-1)

    def stream_sent(self) -> None:
        self.streams_sent += 1
        self._notify()

    def next_id(self) -> str:
        """Unique across restarts too, as a real upstream's ids are (stored responses are keyed by them)."""
        return f"sim_{self._run}{next(self._ids):06d}"

    @staticmethod
    def error_message(status: int) -> str:
        return _ERROR_MESSAGES.get(status, "simulated error")

    # ------------------------------------------------------------ serving

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, shutdown: trio.Event | None = None,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        config = hypercorn.config.Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("tollhouse.simulator.server")
        config.keep_alive_timeout = 75
        event = shutdown or trio.Event()
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(hypercorn.trio.serve, self, config, shutdown_trigger=event.wait))
            self.url = binds[0]
            task_status.started(self.url)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if "traceparent" in headers:
                self.traceparents.append(headers["traceparent"])  # a WebSocket's, from its handshake
            return await serve_socket(self, scope, receive, send, _bearer(headers, {}))
        if scope["type"] != "http":
            return
        self.requests += 1
        self._bump(+1)
        try:
            await self._http(scope, receive, send)
        finally:
            self._bump(-1)

    async def _http(self, scope, receive, send) -> None:
        path = scope["path"]
        if scope["method"] == "GET" and path.rstrip("/").endswith("/models"):
            return await _send_json(send, 200, {"object": "list", "data": [{"id": "sim-chat", "object": "model"}]})
        counter = next((c for c in COUNTS if c.path.match(path)), None)
        for proto in PROTOCOLS:
            match = proto.path.match(path) if counter is None else None
            if match or (counter is not None and proto.name == counter.protocol):
                break
        else:
            return await _send_json(send, 404, {"error": {"message": f"no route {path}"}})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        key = proto.key_header(headers, query)
        if counter is not None:
            self.requests_by_key[key] = self.requests_by_key.get(key, 0) + 1
            return await self._count(proto, counter, counter.path.match(path), query, body, key, send)
        self.requests_by_key[key] = self.requests_by_key.get(key, 0) + 1
        if "traceparent" in headers:
            self.traceparents.append(headers["traceparent"])
        try:
            doc = load_json_object(body)
            self.bodies.append(doc)
            req = proto.parse(match, query, doc)
            check_replayed(proto.name, doc, self.signer)
        except GatewayError as exc:
            return await _send_json(send, exc.status, proto.format_error(exc))
        fault = fault_for(req.model, req, self.key_faults.get(key))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            await self._respond(proto, req, doc, len(body), fault, send)
            nursery.cancel_scope.cancel()

    async def _respond(self, proto: SimProtocol, req, doc: dict, size: int, fault: Fault, send) -> None:
        if fault.ttfb_stall:
            await trio.sleep(fault.ttfb_stall)
        if fault.reject_stream_options and "stream_options" in doc:
            name, status = _REJECTION_BODIES[fault.reject_stream_options]
            body = resources.files("providers").joinpath("sim_data", name).read_bytes()
            return await _send_raw(send, status, body, [])
        if fault.status:
            return await self._error(proto, fault, send)
        result = answer(req, size, fault, self.next_id())
        if wants_thinking(proto.name, doc):
            result = with_thinking(proto.name, doc, result, self.signer)
        self.reported.append(result.response.usage)
        model = base_model(req.model)
        if not req.stream:
            return await _send_json(send, 200, proto.format_response(result.response, model))
        encoder = proto.encoder(attrs.evolve(req, include_usage=req.include_usage and not fault.no_usage), model)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", encoder.content_type.encode())]})
        delay = 1.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        for n, event in enumerate(result.events):
            if fault.disconnect_after is not None and n >= fault.disconnect_after:
                raise SimulatedDisconnect()
            if fault.stall_after is not None and n >= fault.stall_after:
                await trio.sleep_forever()
            if fault.error_after is not None and n >= fault.error_after:
                err = classify_upstream(529 if proto.name == "anthropic" else 500, b'{"error":{"message":"Overloaded"}}', {}, None)
                await send({"type": "http.response.body", "body": encoder.error(err), "more_body": False})
                return
            data = encoder.encode([*result.opening, event] if n == 0 else [event])
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if delay:
                await trio.sleep(delay)
        await send({"type": "http.response.body", "body": encoder.close(), "more_body": fault.hold_open})
        self.stream_sent()
        if fault.hold_open:
            await trio.sleep_forever()

    async def _count(self, proto: SimProtocol, counter: SimCount, match: re.Match, query: dict, body: bytes,
                     key: str, send) -> None:
        """A counting endpoint: the simulator's own count, or the fault asked for."""
        try:
            doc = load_json_object(body)
            self.counts.append((counter.protocol, doc))
            req = counter.parse(match, query, doc)
        except GatewayError as exc:
            return await _send_json(send, exc.status, proto.format_error(exc))
        fault = fault_for(req.model or match.groupdict().get("model", ""), req, self.key_faults.get(key))
        if fault.status:
            return await self._error(proto, fault, send)
        await _send_json(send, 200, counter.answer(req))

    async def refuse(self, protocol: str, fault: Fault, send) -> None:
        """Answer with the error ``fault`` asks for, in ``protocol``'s shape (the
        WebSocket side refuses a handshake with it)."""
        await self._error(next(p for p in PROTOCOLS if p.name == protocol), fault, send)

    async def _error(self, proto: SimProtocol, fault: Fault, send) -> None:
        headers = []
        if fault.retry_after is not None and not proto.wait_in_body:
            headers.append((b"retry-after", fault.retry_after.encode()))
        if fault.retry_after_ms is not None and not proto.wait_in_body:
            headers.append((b"retry-after-ms", fault.retry_after_ms.encode()))
        message = self.error_message(fault.status)
        err = classify_upstream(fault.status, json.dumps({"error": {"message": message}}).encode(), {},
                                 _wait_seconds(fault) if proto.wait_in_body else None)
        err.status = fault.status
        await _send_raw(send, fault.status, json.dumps(proto.format_error(err)).encode(), headers)


def _wait_seconds(fault: Fault) -> float | None:
    """The wait a fault asks for, in seconds, for protocols that state it in the body."""
    try:
        if fault.retry_after_ms is not None:
            return float(fault.retry_after_ms) / 1000.0
        return float(fault.retry_after) if fault.retry_after is not None else None
    except ValueError:
        return None


async def _cancel_on_disconnect(receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _send_json(send, status: int, doc: Any) -> None:
    await _send_raw(send, status, json.dumps(doc).encode(), [])


async def _send_raw(send, status: int, body: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})

