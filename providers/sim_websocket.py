"""The simulator's Responses WebSocket mode: ``GET /v1/responses`` (or ``/responses``)
upgraded through hypercorn's ASGI websocket scope.

As OpenAI's: the handshake carries the key (``Authorization: Bearer``); each
``response.create`` text message (the HTTP body plus ``type``) is answered with the
events the HTTP stream would send for that body, one JSON text frame each; an ``error``
frame (``{"type": "error", "status": ..., "error": {...}}``) answers what the HTTP side
would refuse with a status. The connection remembers its last response, and only it:
a ``previous_response_id`` naming anything else is ``previous_response_not_found``.
``generate: false`` (a prewarm) answers ``response.created`` and ``response.completed``
with no output and zero usage, and can be chained from.

Faults are the HTTP side's: a key whose fault has a status is refused before the
``101`` with the HTTP answer; per turn, model suffixes and prompt directives apply
(``disconnect_after`` closes the socket with 1011 mid-turn).
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from protocols import openai_responses
from protocols.errors import GatewayError, InvalidRequest, classify_upstream
from protocols.openai_responses_wire import response_id, response_object
from protocols.sse import SSEDecoder
from protocols.unified import Usage
from protocols.validate import load_json_object
from providers.sim_script import Fault, answer, base_model, fault_for
from providers.sim_thinking import check_replayed, wants_thinking, with_thinking

if TYPE_CHECKING:
    from providers.simulator import Simulator

PATH = re.compile(r"^(?:/v1)?/responses$")
INBOX_SIZE = 8
# The fields of a ``response.create`` that are the socket's, not the HTTP body's.
SOCKET_FIELDS = ("type", "previous_response_id", "generate")


@attrs.frozen
class SimTurn:
    """One ``response.create`` as the simulator received it: the model asked for, the
    key the connection presented, and how it chained."""

    model: str
    key: str
    previous_response_id: str | None
    generate: bool


class _Hangup(Exception):
    """A fault closed the socket mid-turn; the connection is over."""


@attrs.define
class _Connection:
    key: str
    last_id: str | None = None  # the connection-local cache: the last response completed here


async def serve_socket(sim: "Simulator", scope: dict, receive: Any, send: Any, key: str) -> None:
    """One client connection, from its ``websocket.connect`` to its end."""
    await receive()  # websocket.connect
    if not PATH.match(scope["path"]):
        return await _deny(send, 404, {"error": {"message": f"no route {scope['path']}"}}, [])
    refusal = sim.key_faults.get(key)
    if refusal is not None and refusal.status:
        return await sim.refuse(openai_responses.NAME, refusal, _denial(send))
    await send({"type": "websocket.accept"})
    sim.socket_opened()
    conn = _Connection(key)
    try:
        async with trio.open_nursery() as nursery:
            inbox_send, inbox = trio.open_memory_channel[str](INBOX_SIZE)
            nursery.start_soon(_read_messages, receive, inbox_send, nursery.cancel_scope)
            async with inbox:
                async for text in inbox:
                    await _turn(sim, conn, text, send)
    except _Hangup:
        pass
    finally:
        sim.socket_closed()


async def _read_messages(receive: Any, inbox: trio.MemorySendChannel, scope: trio.CancelScope) -> None:
    """Client messages into the inbox; the client's leaving cancels the connection (and
    the turn it was in)."""
    async with inbox:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                scope.cancel()
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            await inbox.send(text)


async def _turn(sim: "Simulator", conn: _Connection, text: str, send: Any) -> None:
    sim.turn_started(conn.key)
    try:
        await _answer(sim, conn, text, send)
    finally:
        sim.turn_ended()


async def _answer(sim: "Simulator", conn: _Connection, text: str, send: Any) -> None:
    try:
        doc = load_json_object(text.encode("utf-8", "surrogatepass"))
    except GatewayError as exc:
        return await _send_error(send, exc)
    sim.bodies.append(doc)
    previous = doc.get("previous_response_id")
    generate = doc.get("generate") is not False
    model = doc.get("model")
    sim.ws_turns.append(SimTurn(str(model), conn.key, previous if isinstance(previous, str) else None, generate))
    if doc.get("type") != "response.create":
        return await _send_error(send, InvalidRequest(f"Unsupported message type {doc.get('type')!r}: "
                                                      "send 'response.create'.", param="type"))
    if previous is not None and previous != conn.last_id:
        return await _send_frame(send, {"type": "error", "status": 400, "error": {
            "type": "invalid_request_error", "code": "previous_response_not_found",
            "message": f"Previous response with id {previous!r} not found.", "param": "previous_response_id"}})
    if not isinstance(model, str) or not model:
        return await _send_error(send, InvalidRequest("Missing required parameter: 'model'.", param="model"))
    if not generate:
        return await _prewarm(sim, conn, base_model(model), send)
    try:
        body = {k: v for k, v in doc.items() if k not in SOCKET_FIELDS}
        req = openai_responses.parse_request(body)
        check_replayed(openai_responses.NAME, body, sim.signer)
    except GatewayError as exc:
        return await _send_error(send, exc)
    fault = fault_for(req.model, req, sim.key_faults.get(conn.key))
    await _stream(sim, conn, req, len(text), fault, send, thinks=wants_thinking(openai_responses.NAME, body))


async def _prewarm(sim: "Simulator", conn: _Connection, model: str, send: Any) -> None:
    rid = response_id(sim.next_id())
    now = int(time.time())
    await _send_frame(send, {"type": "response.created", "sequence_number": 0, "response": response_object(
        rid, model, now, status="in_progress", output=[], usage=None)})
    await _send_frame(send, {"type": "response.completed", "sequence_number": 1, "response": response_object(
        rid, model, now, status="completed", output=[], usage=Usage())})
    sim.reported.append(Usage())
    conn.last_id = rid


async def _stream(sim: "Simulator", conn: _Connection, req: Any, size: int, fault: Fault, send: Any,
                  thinks: bool = False) -> None:
    if fault.ttfb_stall:
        await trio.sleep(fault.ttfb_stall)
    if fault.status:
        body = json.dumps({"error": {"message": sim.error_message(fault.status)}}).encode()
        err = classify_upstream(fault.status, body, {}, None)
        err.status = fault.status
        headers = {name: value for name, value in (("retry-after", fault.retry_after),
                                                   ("retry-after-ms", fault.retry_after_ms)) if value is not None}
        return await _send_error(send, err, headers)
    result = answer(req, size, fault, sim.next_id())
    if thinks:
        result = with_thinking(openai_responses.NAME, {}, result, sim.signer)
    sim.reported.append(result.response.usage)
    model = base_model(req.model)
    encoder = openai_responses.StreamEncoder(attrs.evolve(req, include_usage=not fault.no_usage), model)
    delay = 1.0 / sim.tokens_per_second if sim.tokens_per_second else 0.0
    for n, event in enumerate(result.events):
        if fault.disconnect_after is not None and n >= fault.disconnect_after:
            await send({"type": "websocket.close", "code": 1011})
            raise _Hangup()
        if fault.stall_after is not None and n >= fault.stall_after:
            await trio.sleep_forever()
        if fault.error_after is not None and n >= fault.error_after:
            err = classify_upstream(500, b'{"error":{"message":"Overloaded"}}', {}, None)
            return await _send_events(send, encoder.error(err))
        await _send_events(send, encoder.encode([*result.opening, event] if n == 0 else [event]))
        if delay:
            await trio.sleep(delay)
    await _send_events(send, encoder.close())
    conn.last_id = encoder.id
    sim.stream_sent()


async def _send_events(send: Any, sse: bytes) -> None:
    """The encoder's SSE bytes as the socket carries them: each event's data, one text frame."""
    for event in SSEDecoder().feed(sse):
        if event.data is not None:
            await send({"type": "websocket.send", "text": event.data.decode("utf-8")})


async def _send_frame(send: Any, doc: dict) -> None:
    await send({"type": "websocket.send", "text": json.dumps(doc, separators=(",", ":"), ensure_ascii=False)})


async def _send_error(send: Any, err: GatewayError, headers: dict | None = None) -> None:
    """An ``error`` frame: the HTTP side's error body, its status, and its headers."""
    frame: dict = {"type": "error", "status": err.status, **openai_responses.format_error(err)}
    if headers:
        frame["headers"] = headers
    await _send_frame(send, frame)


def _denial(send: Any) -> Any:
    """An ASGI ``send`` that turns an HTTP answer into the websocket scope's refusal
    of the handshake (the ``websocket.http.response`` extension)."""

    async def deny(message: dict) -> None:
        await send({**message, "type": "websocket." + message["type"]})

    return deny


async def _deny(send: Any, status: int, doc: Any, headers: list) -> None:
    deny = _denial(send)
    await deny({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await deny({"type": "http.response.body", "body": json.dumps(doc).encode(), "more_body": False})
