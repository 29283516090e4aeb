"""``metrics.port``: ``GET /metrics`` on a port of its own, served by a second, tiny
hypercorn server beside the main one, started and stopped with the runtime.

It answers that one path (and ``HEAD``), with the same token rule as the main port
(``gateway.metrics.refusal``); every other path is a 404 and every other method a 405.
It reads nothing but the request head, so it needs no body limits.
"""

from __future__ import annotations

import json
import logging

import hypercorn.config
import hypercorn.trio
import trio

from gateway.metrics import CONTENT_TYPE, refusal


class MetricsApp:
    """The listener's ASGI application."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] != "/metrics":
            return await _answer(send, 404, _error("not_found_error", f"No route for {scope['path']}."))
        if scope["method"] not in ("GET", "HEAD"):
            return await _answer(send, 405, _error("invalid_request_error", "Only GET is allowed on /metrics."),
                                 [(b"allow", b"GET, HEAD")])
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        err = refusal(self.runtime.config, authorization)
        if err is not None:
            return await _answer(send, err.status, _error(err.kind, err.message), [(b"www-authenticate", b"Bearer")])
        body = await self.runtime.metrics.scrape(self.runtime)
        await _answer(send, 200, body, [(b"cache-control", b"no-store")], CONTENT_TYPE,
                      head=scope["method"] == "HEAD")


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"type": kind, "message": message}}).encode()


async def _answer(send, status: int, body: bytes, headers: list = (), content_type: str = "application/json",
                  head: bool = False) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body)), *headers]})
    await send({"type": "http.response.body", "body": b"" if head else body})


class MetricsPortUnavailable(Exception):
    """The metrics port cannot be listened on (in use, not permitted): the start is refused."""


class _BoundConfig(hypercorn.config.Config):
    """Hypercorn's config with its sockets bound beforehand, so a port that cannot be
    bound is a plain ``OSError`` here rather than deep inside hypercorn's nurseries."""

    bound: hypercorn.config.Sockets | None = None

    def create_sockets(self) -> hypercorn.config.Sockets:
        return self.bound


async def serve(runtime, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until cancelled; ``task_status.started`` gets the bound addresses (``http://host:port``).
    A port that cannot be bound refuses the start with one line naming it."""
    cfg = _BoundConfig()
    cfg.bind = [f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("hypercorn.error")  # a logger is used as is: no second handler of its own
    cfg.keep_alive_timeout = runtime.config.server.keep_alive_timeout_s
    cfg.request_head_timeout = runtime.config.server.read_timeout_s  # read by gateway.http1's protocol
    cfg.read_timeout = None
    cfg.graceful_timeout = 0.0
    try:
        cfg.bound = hypercorn.config.Config.create_sockets(cfg)
    except OSError as exc:
        raise MetricsPortUnavailable(f"metrics.port: cannot listen on {host}:{port} "
                                     f"({exc.strerror or exc})") from None
    await hypercorn.trio.serve(MetricsApp(runtime), cfg, task_status=task_status)
