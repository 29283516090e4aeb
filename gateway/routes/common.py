"""The shared shape of every LLM front door: read, parse, dispatch, render errors.

These routes are plain ASGI handlers (not Quart views) so that the dispatcher owns the
response: it decides the status only after the upstream's first event, streams with
its own disconnect watcher, and never buffers a body in a framework layer.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Awaitable, Callable

import trio

from gateway.asgi_link import AsgiLink, read_body
from gateway.field_cache import session_of
from gateway.logs import request_context
from gateway.observe import Transport, refused
from gateway.request import Call, Recorder
from gateway.tracing import RequestTrace
from actors.usage import Authenticate
from actors.usage_core import UNKNOWN_KEY
from protocols.seams import ClientCodec, Parse
from protocols.errors import (GatewayError, GatewayFailure, InvalidRequest, NotFound, RequestTimeout,
                              Unauthenticated)
from protocols.validate import load_json_object

log = logging.getLogger("tollhouse.routes")


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def bearer(scope) -> str | None:
    value = header(scope, b"authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def fresh_request_id() -> str:
    """An id for an answer no ledger entry belongs to (refused before any reserve)."""
    return "req_" + secrets.token_hex(11)


def error_headers(err: GatewayError, request_id: str | None = None, close: bool = False) -> list:
    """An error answer's headers; ``close`` (always for a body that timed out: the rest
    of it is not waited for) ends the connection after the answer."""
    headers = [(b"content-type", b"application/json"),
               (b"x-request-id", (request_id or fresh_request_id()).encode())]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, int(err.retry_after + 0.999))).encode()))
    if close or isinstance(err, RequestTimeout):
        headers.append((b"connection", b"close"))
    return headers


MISSING_KEY = "Missing gateway key: send it as a bearer token (or the protocol's key header)."


def check_key_known(runtime: Any, key: str | None) -> None:
    """Refuse (401) a missing key, or one the usage actor does not know, from the
    headers alone: before the body is read, so a stranger cannot hold a connection by
    trickling one. Reads the hash set the actor publishes (no message on the hot path);
    until it has published one, the key is checked with the reservation as before.
    A known key is still authenticated in full (disabled, allowed models) by the actor."""
    if not key:
        raise Unauthenticated(MISSING_KEY)
    meter = runtime.supervisor.actor("usage")
    known = meter.key_hashes
    if known is not None and meter.core.key_hash(key) not in known:  # the meter's memo of recent keys
        raise Unauthenticated(UNKNOWN_KEY)


async def read_request_body(runtime: Any, scope, receive) -> bytes:
    server = runtime.config.server
    return await read_body(scope, receive, server.max_body_bytes, server.body_timeout_s)


async def send_error(send, client: ClientCodec, err: GatewayError, request_id: str | None = None,
                     close: bool = False) -> None:
    await send({"type": "http.response.start", "status": err.status,
                "headers": error_headers(err, request_id, close)})
    await send({"type": "http.response.body", "body": json.dumps(client.format_error(err)).encode()})


#: turns a parsed body into the call's request, its recorder and its size in bytes (a
#: chained Responses request grows by the conversation it names)
Prepare = Callable[[dict, str, int], Awaitable[tuple[Any, Recorder | None, int]]]


async def refuse_websocket(scope, send, client: ClientCodec, err: GatewayError, request_id: str | None = None) -> None:
    """Refuse a WebSocket handshake with an HTTP answer in ``client``'s JSON shape (ASGI's
    denial response; without it hypercorn would answer 403 with no body)."""
    body = json.dumps(client.format_error(err)).encode()
    headers = [(b"content-length", str(len(body)).encode())] + error_headers(err, request_id)
    await send({"type": "websocket.http.response.start", "status": err.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def serve_llm(runtime: Any, client: ClientCodec, scope, receive, send, key: str | None,
                    parse: Parse, prepare: Prepare | None = None) -> None:
    """Answer one LLM call in ``client``'s protocol; every answer carries ``x-request-id``,
    the id of its ledger entry. A call refused before the dispatcher had it is told to
    the observers here (the dispatcher tells them of every other). Traced, the call is
    one span, continuing the client's ``traceparent``."""
    request_id = runtime.dispatcher.next_id()
    with request_context(request_id), \
            runtime.tracing.request(request_id, client.NAME, Transport.HTTP, scope["headers"]) as trace:
        # every line logged for this call carries its id; traced, the call is one span
        await _serve_call(runtime, client, scope, receive, AsgiLink.of(scope, receive, send), key, parse, prepare,
                          request_id, trace)


async def _serve_call(runtime: Any, client: ClientCodec, scope, receive, link: AsgiLink, key: str | None,
                      parse: Parse, prepare: Prepare | None, request_id: str,
                      trace: RequestTrace) -> None:
    send = link.send
    started_at = trio.current_time()
    request = doc = None
    dispatched = False
    try:
        check_key_known(runtime, key)
        doc, size = await _read_doc(runtime, scope, receive)
        recorder = None
        if prepare is None:
            request = parse(doc)
        else:
            request, recorder, size = await prepare(doc, key, size)
        dispatched = True
        traces = runtime.transform_traces
        asked = traces.enabled and traces.asked(scope["headers"])  # off: this one check
        await runtime.dispatcher.serve(Call(request, key, client, size, request_id, recorder, trace=trace,
                                            received=doc, trace_asked=asked,
                                            session=session_of(scope["headers"])), link)
    except GatewayError as err:
        answered, key_name = await _answer_error(runtime, client, send, link, key, err, request_id, request)
        if not dispatched:
            _observe_refusal(runtime, client, request_id, doc, answered, started_at, key_name)
    except Exception:
        # A bug, not the client's doing: logged with its trace, answered in the client's
        # shape (the dispatcher has already settled whatever was reserved).
        log.exception("request %s failed inside the gateway", request_id)
        answered, key_name = await _answer_error(runtime, client, send, link, key, GatewayFailure(
            f"The gateway failed to serve this request ({request_id})."), request_id, request)
        if not dispatched:
            _observe_refusal(runtime, client, request_id, doc, answered, started_at, key_name)


async def _read_doc(runtime: Any, scope, receive) -> tuple[Any, int]:
    """The request's JSON object and its size in bytes. The bytes themselves are not
    kept past the parse: a call's frame lives as long as its stream, and an agent's
    body is 50 KB and more."""
    body = await read_request_body(runtime, scope, receive)
    return load_json_object(body, runtime.config.server.max_json_depth), len(body)


def _observe_refusal(runtime: Any, client: ClientCodec, request_id: str, doc: Any, err: GatewayError,
                     started_at: float, key_name: str | None) -> None:
    if runtime.observers:
        runtime.observers.tell(refused(request_id, client.NAME, Transport.HTTP, doc, err, started_at, key_name))


async def _answer_error(runtime: Any, client: ClientCodec, send, link: AsgiLink, key: str | None, err: GatewayError,
                        request_id: str, request: Any) -> tuple[GatewayError, str | None]:
    """Answer ``err`` (or what a stranger may be told instead); returns what was answered
    and the key's name, when the key was recognised."""
    key_name = err.key_name
    if not link.started:
        err, key_name = await _stranger_first(runtime, key, err)
        await send_error(send, client, err, request_id)
    elif not link.ended and request is not None:
        await link.end(client.StreamEncoder(request, request.model).error(err))
    return err, key_name


async def _stranger_first(runtime: Any, key: str | None, err: GatewayError) -> tuple[GatewayError, str | None]:
    """A malformed request or an unknown model tells an unauthenticated caller nothing:
    the key is checked first, on these error paths only (the hot path authenticates
    with its reservation). Returns what to answer and the key's name, once known."""
    if key and isinstance(err, (InvalidRequest, NotFound)):
        try:
            return err, await runtime.actors.usage.ask(Authenticate(key))
        except GatewayError as refused:
            return refused, None
    return err, err.key_name
