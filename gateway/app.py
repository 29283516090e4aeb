"""The ASGI application: hot LLM routes as plain ASGI, everything else in Quart.

``Gateway`` is what hypercorn serves. It owns the lifespan: one nursery runs the
``Runtime`` (simulator, upstream pools, actors) for as long as the server lives, and
Quart's own startup/shutdown run inside it. Hypercorn sends the lifespan shutdown only
after its last connection has ended (finished, or cancelled at the end of the grace
period and settled), so the runtime's ordered stop never pulls an actor or the ledger
from under a request. LLM calls go straight to their route
handlers; admin, models, health and every unknown path go to the Quart app, whose
404/405/413 handlers answer in the caller's protocol shape.
"""

from __future__ import annotations

import json
import logging

import trio
from quart_trio import QuartTrio

from actors.ledger import LedgerFault
from actors.store_db import StoreFault
from gateway.config import Config
from gateway.generation import ConfigSource
from gateway.metrics.listener import MetricsPortUnavailable
from gateway.routes import admin, admin_config, admin_traces, health, models
from gateway.routes import metrics as metrics_routes
from gateway.routes import anthropic as anthropic_routes
from gateway.routes import gemini as gemini_routes
from gateway.routes import openai_chat as chat_routes
from gateway.routes import openai_responses as responses_routes
from gateway.routes import responses_store as stored_responses_routes
from gateway.routes.common import fresh_request_id, refuse_websocket, send_error
from gateway.observe import Transport, refused
from gateway.runtime import Runtime
from gateway import ui
from gateway.state_lock import StateDirBusy
from gateway.traffic import Traffic
from gateway.worker_link import Seat
from protocols import anthropic_messages, gemini, openai_chat
from protocols.errors import InvalidRequest, MethodNotAllowed, NotFound

log = logging.getLogger("tollhouse")

ROUTE_MODULES = [chat_routes, responses_routes, stored_responses_routes, anthropic_routes, gemini_routes]


def client_protocol_for(path: str):
    """Which protocol's error shape a path's caller expects."""
    for module in ROUTE_MODULES:
        for _, pattern, _, protocol in module.ROUTES:
            if pattern.match(path):
                return protocol
    for prefix, protocol in PREFIX_PROTOCOLS:
        if path.startswith(prefix):
            return protocol
    return openai_chat


PREFIX_PROTOCOLS: list = [("/v1beta", gemini), ("/v1/messages", anthropic_messages)]


class Gateway:
    def __init__(self, config: Config, source: ConfigSource | None = None, seat: Seat | None = None) -> None:
        self.config = config  # as it started (a reload changes ``runtime.config``)
        self.traffic = Traffic()
        self.runtime = Runtime(config, stopping=lambda: self.traffic.stopping, stop_begun=self.traffic.stop_begun,
                               source=source, seat=seat)
        self.startup_error: BaseException | None = None  # why the lifespan refused to start
        self.routes = [route for module in ROUTE_MODULES for route in module.ROUTES]
        self.ws_routes = [route for module in ROUTE_MODULES for route in getattr(module, "WEBSOCKET_ROUTES", ())]
        self.quart = QuartTrio("tollhouse")
        # "//v1//models" names no route: a JSON 404, never Werkzeug's HTML 308 to a merged path
        self.quart.url_map.merge_slashes = False
        self.quart.config["RESPONSE_TIMEOUT"] = None
        self._body_limits(config)
        self.runtime.on_reload.append(self._body_limits)
        self.quart.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
        self.quart.extensions["tollhouse"] = self.runtime
        self.quart.register_blueprint(models.blueprint)
        self.quart.register_blueprint(health.blueprint)
        ui.install(self.quart)  # the admin web page, /admin/ui
        self.quart.register_blueprint(admin.blueprint)
        self.quart.register_blueprint(metrics_routes.blueprint)
        self.quart.register_blueprint(admin_config.blueprint)
        self.quart.register_blueprint(admin_traces.blueprint)
        _error_handlers(self.quart)

    def _body_limits(self, config: Config) -> None:
        """Quart's limits for the bodies it reads (admin), from the running config."""
        self.quart.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
        self.quart.config["BODY_TIMEOUT"] = config.server.body_timeout_s  # admin bodies: 408 past it

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        with self.traffic.request():
            await self._serve(kind, scope, receive, send)

    async def _serve(self, kind: str, scope, receive, send) -> None:
        if kind == "http":
            path = scope["path"]
            if _ambiguous_framing(scope):
                return await send_error(send, client_protocol_for(path), InvalidRequest(
                    "A request may not carry both Content-Length and Transfer-Encoding."), close=True)
            refusing = None  # the protocol of a route on this path that has another method
            for method, pattern, handler, protocol in self.routes:
                match = pattern.match(path)
                if match is None:
                    continue
                if scope["method"] != method:
                    refusing = refusing or protocol
                    continue
                await self.runtime.ready.wait()
                return await handler(self.runtime, scope, receive, send, match)
            if refusing is not None:
                return await send_error(send, refusing, MethodNotAllowed(
                    f"Method {scope['method']} is not allowed on {path}."))
            return await self.quart(scope, receive, _whole_sends(send))
        for pattern, handler in self.ws_routes:
            match = pattern.match(scope["path"])
            if match is not None:
                await self.runtime.ready.wait()
                return await handler(self.runtime, scope, receive, send, match)
        await refuse_websocket(scope, send, client_protocol_for(scope["path"]),
                               NotFound(f"No WebSocket route for {scope['path']}."))

    async def _lifespan(self, receive, send) -> None:
        async with trio.open_nursery() as nursery:
            self.quart.nursery = nursery
            message = await receive()
            assert message["type"] == "lifespan.startup"
            try:
                await nursery.start(self.runtime.run)
                await self.quart.startup()
            except Exception as exc:
                self.startup_error = error = _first_leaf(exc)
                if isinstance(error, (StateDirBusy, LedgerFault, StoreFault, MetricsPortUnavailable)):
                    log.error("startup refused: %s", error)  # an operator's situation, not a bug
                else:
                    log.exception("startup failed")
                await send({"type": "lifespan.startup.failed", "message": f"{type(error).__name__}: {error}"})
                nursery.cancel_scope.cancel()
                return
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            try:
                await self.quart.shutdown()
                await self.runtime.stop()  # in order: meter flushed, actors, pools, simulator, lock
            finally:
                nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})


def _ambiguous_framing(scope) -> bool:
    """Whether a request says both how long its body is and that it is chunked: two
    framings that a proxy in front and this server could read differently (request
    smuggling). h11 would use the chunked one; the request is refused instead."""
    names = {name for name, _ in scope["headers"]}
    return b"content-length" in names and b"transfer-encoding" in names


def _whole_sends(send):
    """``send``, with each call shielded from cancellation.

    Quart-trio cancels a request's task the moment hypercorn reports the client gone,
    and hypercorn does that from inside the response's final ``send``, where it is
    re-arming the connection's idle timer. Cancelled there, the timer is never re-armed:
    a keep-alive connection that Quart answered would then never be closed, neither
    after ``keep_alive_timeout`` nor by a graceful stop, which would wait for it for the
    whole grace period. Each send is brief (hypercorn already shields the socket write).
    """

    async def whole_send(message) -> None:
        with trio.CancelScope(shield=True):
            await send(message)

    return whole_send


def _first_leaf(exc: BaseException) -> BaseException:
    """The error inside the nurseries' groups: what actually refused the start."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


#: paths of the LLM APIs: a call there that no route takes is told to the observers
API_PREFIXES = ("/v1/", "/v1beta/")


def _error_handlers(app: QuartTrio) -> None:
    from quart import request

    @app.after_request
    async def request_id(response):
        response.headers.setdefault("x-request-id", fresh_request_id())
        worker = app.extensions["tollhouse"].worker
        if worker is not None:  # which of ``--workers N`` answered (admin, models, health)
            response.headers["x-tollhouse-worker"] = str(worker)
        return response

    def render(err):
        protocol = client_protocol_for(request.path)
        body = json.dumps(protocol.format_error(err))
        request_id = fresh_request_id()
        observers = app.extensions["tollhouse"].observers
        if observers and request.path.startswith(API_PREFIXES):  # a client's call to no route: logged
            observers.tell(refused(request_id, protocol.NAME, Transport.HTTP, None, err, trio.current_time()))
        return body, err.status, {"content-type": "application/json", "x-request-id": request_id}

    @app.errorhandler(404)
    async def not_found(_):
        return render(NotFound(f"No route for {request.method} {request.path}."))

    @app.errorhandler(405)
    async def not_allowed(_):
        return render(MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}."))

    @app.errorhandler(408)
    async def timed_out(_):
        from protocols.errors import RequestTimeout

        body, status, headers = render(RequestTimeout("The request body did not arrive in time."))
        return body, status, {**headers, "connection": "close"}

    @app.errorhandler(413)
    async def too_large(_):
        from protocols.errors import PayloadTooLarge

        return render(PayloadTooLarge("Request body too large."))


def create_app(config: Config, source: ConfigSource | None = None, seat: Seat | None = None) -> Gateway:
    return Gateway(config, source, seat)
