"""``GET /v1/responses`` upgraded: the Responses API's WebSocket mode (what Codex uses).

The handshake is refused (an HTTP answer in JSON, before any 101) for a browser origin
not in ``websocket.allowed_origins``, a missing, unknown or disabled gateway key, and
with 426 when ``websocket.enabled`` is false (Codex then falls back to HTTP at once).
Hypercorn answers the rest of the handshake: ``permessage-deflate`` when the client
offers it, pings every ``websocket.ping_interval_s``, and a close (1009) for a message
over ``websocket.max_message_bytes``.

A Responses upstream with ``websocket: true`` is reached over one upstream socket per
credential for the connection (``providers.responses_socket.SocketSession``), every other
upstream per turn over HTTP. Every turn sends the whole conversation (no upstream ever
sees a ``previous_response_id``: see ``gateway.conversation``).

Then the client sends ``response.create`` messages (the HTTP body plus ``type``) and
gets, for each, the events the SSE stream would carry, one JSON text frame each. Turns
run one at a time, in order. Each is one pass through the dispatcher: its own
reservation and settlement (a 402 is an ``error`` frame and the connection stays
usable), failover before its first event, and a client that closes mid-turn cancels
that turn through the normal terminal path (``client_cancel``). ``generate: false``
(Codex's prewarm) is answered by the gateway, free, with a response id whose input is
kept: the next turn may chain to it. The connection's last response is kept for
``previous_response_id`` even with ``store: false``, as the API's connection-local
cache is.

A connection idle for ``websocket.idle_timeout_s`` between turns is closed (1000); one
open for ``websocket.max_lifetime_s`` gets the API's ``websocket_connection_limit_reached``
error after its running turn and is closed; a graceful stop closes idle connections at
once (1001) and the others after their running turn.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from actors.usage import Authenticate, hash_key
from gateway.conversation import SOCKET_ONLY_FIELDS, Keeper, resolve, wants_store
from gateway.logs import request_context
from gateway.observe import Served, Transport, refused
from gateway.request import Call
from gateway.routes.common import bearer, check_key_known, fresh_request_id, header, refuse_websocket
from gateway.socket_link import ClientSocket, TurnLink
from gateway.sockets import SocketInfo, Turn, TurnEnd
from gateway.tracing import RequestTrace
from protocols import openai_responses
from protocols.errors import Forbidden, GatewayError, GatewayFailure, InvalidRequest, UpgradeRequired
from protocols.openai_responses_wire import new_id, response_object
from protocols.unified import Usage
from protocols.validate import check, load_json_object
from providers.responses_socket import SocketSession

log = logging.getLogger("tollhouse.websocket")

GOING_AWAY = 1001
NORMAL = 1000


async def serve_socket(runtime: Any, scope, receive, send, match) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    cfg = runtime.config.websocket
    key = bearer(scope)
    started_at = trio.current_time()
    try:
        if not cfg.enabled:
            raise UpgradeRequired("The Responses WebSocket mode is off on this gateway; use HTTP POST /v1/responses.")
        _check_origin(header(scope, b"origin"), cfg.allowed_origins)
        check_key_known(runtime, key)
        key_name = await runtime.actors.usage.ask(Authenticate(key))
    except GatewayError as err:
        request_id = fresh_request_id()  # a refused handshake is a refused call: one access line
        if runtime.observers:
            runtime.observers.tell(refused(request_id, openai_responses.NAME, Transport.WEBSOCKET, None, err,
                                           started_at))
        return await refuse_websocket(scope, send, openai_responses, err, request_id)
    await send({"type": "websocket.accept"})
    socket = ClientSocket(receive, send)
    info = runtime.sockets.add(key_name)
    try:
        # a Responses upstream that speaks WebSocket keeps one socket per credential for
        # this connection (the providers find the session in their task's context)
        async with SocketSession.open() as upstream, trio.open_nursery() as nursery:
            info.upstream = upstream
            nursery.start_soon(socket.pump)
            await Connection(runtime, socket, key, info, scope["headers"]).run()
            nursery.cancel_scope.cancel()
    finally:
        runtime.sockets.remove(info)


def _check_origin(origin: str | None, allowed: tuple[str, ...]) -> None:
    """A browser says where the page came from; only listed origins may open a socket
    that spends a key's credit (a page elsewhere could otherwise ride a user's key)."""
    if origin is not None and origin not in allowed:
        raise Forbidden(f"Origin {origin[:200]!r} may not open a WebSocket on this gateway.")


class Connection:
    """The turns of one client WebSocket."""

    def __init__(self, runtime: Any, socket: ClientSocket, key: str, info: SocketInfo,
                 headers: list | tuple = ()) -> None:
        self.runtime = runtime
        self.headers = headers  # the handshake's: each turn's span continues its ``traceparent``
        self.cfg = runtime.config.websocket
        self.socket = socket
        self.key = key
        self.owner = hash_key(key)
        self.info = info

    async def run(self) -> None:
        cfg = self.cfg
        closes_at = trio.current_time() + cfg.max_lifetime_s
        stop = self.runtime.stop_begun
        while True:
            if stop.is_set():
                return await self.socket.close(GOING_AWAY, "the gateway is stopping")
            if trio.current_time() >= closes_at:
                await self._error_frame(400, {"type": "invalid_request_error", "code": "websocket_connection_limit_reached",
                                              "message": f"This connection reached its {cfg.max_lifetime_s:g} s limit; "
                                                         "open a new one to continue.", "param": None})
                return await self.socket.close(NORMAL, "connection lifetime reached")
            message = await self._next(min(trio.current_time() + cfg.idle_timeout_s, closes_at), stop)
            if self.socket.gone.is_set():
                return  # turns the client queued before it left are not run
            if message is not None:
                await self.turn(message)
            elif not stop.is_set() and trio.current_time() < closes_at:
                return await self.socket.close(NORMAL, "idle timeout")

    async def _next(self, deadline: float, stop: trio.Event) -> str | bytes | None:
        """The client's next message; None when it closed, stayed idle until ``deadline``,
        or the gateway began to stop."""
        result: list = []

        async def receive(cancel: trio.CancelScope) -> None:
            try:
                result.append(await self.socket.inbox.receive())
            except trio.EndOfChannel:
                pass  # the client closed
            cancel.cancel()

        async def stopped(cancel: trio.CancelScope) -> None:
            await stop.wait()
            cancel.cancel()

        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, nursery.cancel_scope)
                nursery.start_soon(stopped, nursery.cancel_scope)
        return result[0] if result else None

    # ------------------------------------------------------------ one turn

    async def turn(self, raw: str | bytes) -> None:
        request_id = self.runtime.dispatcher.next_id()
        with request_context(request_id), \
                self.runtime.tracing.request(request_id, openai_responses.NAME, Transport.WEBSOCKET,
                                             self.headers) as trace:
            # every line logged for this turn carries its id; traced, the turn is one span
            await self._turn(raw, request_id, trace)

    async def _turn(self, raw: str | bytes, request_id: str, trace: RequestTrace) -> None:
        runtime = self.runtime
        started_at = trio.current_time()
        link = TurnLink(self.socket)
        turn: Turn | None = None
        doc = None
        dispatched = False
        try:
            doc = load_json_object(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw,
                                   runtime.config.server.max_json_depth)
            kind = doc.get("type")
            if kind != "response.create":
                raise InvalidRequest(f"Unsupported message type {str(kind)[:60]!r}: send 'response.create'.",
                                     param="type")
            generate = check(doc, "generate", bool, default=True)
            body = {name: value for name, value in doc.items() if name not in SOCKET_ONLY_FIELDS}
            body["stream"] = True  # a socket's turns are streams (clients send it anyway)
            turn = self.info.begin(request_id if generate else None, str(body.get("model", ""))[:200])
            store = runtime.actors.store
            chained = await resolve(body, self.owner, store, self.socket.last)
            keeper_store = store if wants_store(body) else None
            if not generate:
                await self._prewarm(chained, turn)
                return self._observe(Served(
                    request_id=request_id, protocol=openai_responses.NAME, transport=Transport.WEBSOCKET,
                    model=turn.model, stream=True, status=200, duration_s=trio.current_time() - started_at,
                    key_name=self.info.key_name, cost_micro=0))
            request = openai_responses.parse_request(chained.doc)
            keeper = Keeper(self.owner, chained, request.model, keeper_store, connection=self.socket)
            size = len(raw) + (len(json.dumps(chained.history)) if chained.history else 0)
            dispatched = True
            traces = runtime.transform_traces  # the handshake's trace header asks for every turn
            asked = traces.enabled and traces.asked(self.headers)
            await runtime.dispatcher.serve(Call(request, self.key, openai_responses, size, request_id, keeper,
                                                Transport.WEBSOCKET, trace, received=doc, trace_asked=asked), link)
            turn.end, turn.response_id = TurnEnd.ANSWERED, keeper.kept
        except GatewayError as err:
            await self._turn_failed(link, turn, err)
            if not dispatched:
                self._observe(refused(request_id, openai_responses.NAME, Transport.WEBSOCKET, doc, err, started_at,
                                      self.info.key_name))
        except Exception:
            log.exception("turn %s failed inside the gateway", request_id)
            err = GatewayFailure(f"The gateway failed to serve this turn ({request_id}).")
            await self._turn_failed(link, turn, err)
            if not dispatched:
                self._observe(refused(request_id, openai_responses.NAME, Transport.WEBSOCKET, doc, err, started_at,
                                      self.info.key_name))

    def _observe(self, record: Served) -> None:
        if self.runtime.observers:
            self.runtime.observers.tell(record)

    async def _turn_failed(self, link: TurnLink, turn: Turn | None, err: GatewayError) -> None:
        if turn is not None and turn.end is TurnEnd.RUNNING:
            turn.end, turn.error = (TurnEnd.REFUSED if not link.started else TurnEnd.ANSWERED), err.message[:200]
        if not link.started:
            await self._error_frame(err.status, openai_responses.format_error(err)["error"], err.retry_after)
        elif not link.ended:  # the dispatcher ends its streams itself; this is a last resort
            await link.end(openai_responses.StreamEncoder(None, turn.model if turn else "").error(err))

    async def _error_frame(self, status: int, error: dict, retry_after: float | None = None) -> None:
        """The API's error message on a socket: its HTTP status beside the error object."""
        frame: dict = {"type": "error", "status": status, "error": error}
        if retry_after is not None:
            frame["headers"] = {"retry-after": str(max(1, int(retry_after + 0.999)))}
        await self.socket.send_json(frame)

    async def _prewarm(self, chained: Any, turn: Turn) -> None:
        """``generate: false``: a response id for the input so far, no upstream call, no
        charge; the next turn chains to it."""
        model = str(chained.doc.get("model", ""))
        rid = new_id("resp")
        created = int(time.time())
        done = response_object(rid, model, created, status="completed", output=[], usage=Usage())
        shell = {**done, "status": "in_progress", "usage": None}
        # kept on this connection only: a free message must not fill the shared store
        keeper = Keeper(self.owner, chained, model, None, connection=self.socket)
        keeper.record(None, done)
        await self.socket.send_json({"type": "response.created", "sequence_number": 0, "response": shell})
        await self.socket.send_json({"type": "response.completed", "sequence_number": 1, "response": done})
        turn.end, turn.response_id = TurnEnd.PREWARM, rid

