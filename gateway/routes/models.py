"""``GET /v1/models``, shared by three protocols.

The caller's protocol is read from its headers: ``anthropic-version`` means
Anthropic's shape, ``x-goog-api-key`` or ``?key=`` means Gemini's, otherwise OpenAI's.
The list is what the caller's key may use: every configured model and alias for a key
without a model allow-list, else the names on its allow-list that the gateway serves
(the catch-all ``"*"`` is a route, not a model name, and is never listed).
"""

from __future__ import annotations

import json
import time

from quart import Blueprint, current_app, request

from actors.routing import CATCH_ALL, ListModels, Resolve
from actors.usage_messages import AllowedModels
from gateway.routes import anthropic as anthropic_routes
from gateway.routes import gemini as gemini_routes
from protocols import openai_chat
from protocols.errors import GatewayError

blueprint = Blueprint("models", __name__)


def openai_models(names: list[str]) -> dict:
    now = int(time.time())
    return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "tollhouse"} for n in names]}


# (predicate on the request, protocol module with format_error, formatter of the list)
SHAPES: list = [
    anthropic_routes.MODELS_SHAPE,
    gemini_routes.MODELS_SHAPE,
]


def _shape():
    for applies, protocol, formatter, key_of in SHAPES:
        if applies(request):
            return protocol, formatter, key_of(request)
    auth = request.headers.get("authorization", "")
    return openai_chat, openai_models, auth[7:].strip() if auth.lower().startswith("bearer ") else ""


@blueprint.route("/v1/models", methods=["GET"])
@blueprint.route("/v1beta/models", methods=["GET"])
@blueprint.route("/models", methods=["GET"])
async def list_models():
    protocol, formatter, key = _shape()
    runtime = current_app.extensions["tollhouse"]
    try:
        allowed = await runtime.actors.usage.ask(AllowedModels(key))
        names = await runtime.actors.routing.ask(ListModels())
        if allowed is not None:
            names = [name for name in sorted(set(allowed)) if await _served(runtime, name, names)]
    except GatewayError as err:
        return json.dumps(protocol.format_error(err)), err.status, {"content-type": "application/json"}
    return json.dumps(formatter(names)), 200, {"content-type": "application/json"}


async def _served(runtime, name: str, configured: list[str]) -> bool:
    """Whether a request for ``name`` would be routed (a configured name, a priced
    ``provider/model``, or anything when the config has a catch-all)."""
    if name == CATCH_ALL:
        return False
    if name in configured:
        return True
    try:
        await runtime.actors.routing.ask(Resolve(name))
    except GatewayError:
        return False
    return True

