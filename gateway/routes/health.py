"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness), without a token.

``/healthz`` is 200 for as long as the process can answer: a liveness probe that
fails restarts the process, so it must not fail for anything a restart would not fix.
``/readyz`` is 200 when new requests can be served (``gateway.health``), else 503 with
the reason; a load balancer or an orchestrator's readiness probe stops sending traffic
until it is 200 again.
"""

from __future__ import annotations

from quart import Blueprint, current_app

from gateway.health import readiness

blueprint = Blueprint("health", __name__)


@blueprint.route("/healthz", methods=["GET"])
async def healthz():
    return {"status": "ok"}, 200


@blueprint.route("/readyz", methods=["GET"])
async def readyz():
    state = readiness(current_app.extensions["tollhouse"])
    return state.view(), 200 if state.ready else 503
