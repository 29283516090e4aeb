"""``GET /metrics`` on the main port (unless ``metrics.port`` gives it a port of its own,
or ``metrics.enabled`` is false: then this path is a 404 like any unknown one)."""

from __future__ import annotations

from quart import Blueprint, abort, current_app, request

from gateway.metrics import CONTENT_TYPE, refusal

blueprint = Blueprint("metrics", __name__)


@blueprint.route("/metrics", methods=["GET"])
async def metrics():
    runtime = current_app.extensions["tollhouse"]
    if runtime.metrics is None or runtime.config.metrics.port is not None:
        abort(404)
    err = refusal(runtime.config, request.headers.get("authorization"))
    if err is None and not runtime.ready.is_set():
        return {"status": "starting"}, 503
    if err is not None:
        return {"error": {"type": err.kind, "message": err.message}}, err.status, {"www-authenticate": "Bearer"}
    return await runtime.metrics.scrape(runtime), 200, {"content-type": CONTENT_TYPE, "cache-control": "no-store"}
