"""``POST /v1beta/models/{model}:{method}`` (and ``/v1/...``): the Gemini front door.

Gemini puts the model and the method in the path, and the model may itself contain
``/`` (``simg/sim-gemini``) or the ``models/`` prefix, so one pattern takes everything
up to the last ``:`` and the method picks the handler from a table. Streaming framing
follows ``alt=sse``: SSE with it, one incrementally written JSON array without it.
The key comes as ``x-goog-api-key``, as ``?key=`` (Google's older style, still used by
curl examples) or as a bearer token.
"""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import parse_qs

from gateway.routes.common import bearer, header, send_error, serve_llm
from gateway.routes.counting import serve_count
from protocols import gemini
from protocols.errors import NotFound

GENERATION_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


def query_of(scope) -> dict:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1] for k, v in parse_qs(raw).items()}


def api_key(scope, query: dict) -> str | None:
    return header(scope, b"x-goog-api-key") or query.get("key") or bearer(scope)


async def _generate(runtime, scope, receive, send, model: str, query: dict, *, stream: bool) -> None:
    sse = query.get("alt") == "sse"
    await serve_llm(runtime, gemini, scope, receive, send, api_key(scope, query),
                    partial(gemini.parse_request, model=model, stream=stream, sse=sse))


async def _count_tokens(runtime, scope, receive, send, model: str, query: dict) -> None:
    await serve_count(runtime, gemini, scope, receive, send, api_key(scope, query),
                      partial(_count_request, model=model), lambda tokens: {"totalTokens": tokens})


def _count_request(doc: dict, model: str):
    """A ``countTokens`` body: a bare request or one wrapped in ``generateContentRequest``."""
    inner = doc.get("generateContentRequest")
    return gemini.parse_request(inner if isinstance(inner, dict) else doc, model=model, stream=False)


METHODS = {
    "generateContent": partial(_generate, stream=False),
    "streamGenerateContent": partial(_generate, stream=True),
    "countTokens": _count_tokens,
}


async def model_method(runtime, scope, receive, send, match) -> None:
    model = match["model"]
    if model.startswith("models/"):
        model = model[len("models/"):]
    handler = METHODS.get(match["method"])
    if handler is None:
        return await send_error(send, gemini, NotFound(
            f"Method '{match['method']}' is not supported; use one of {', '.join(GENERATION_METHODS)}."))
    await handler(runtime, scope, receive, send, model, query_of(scope))


ROUTES = [("POST", re.compile(r"^/(v1beta|v1)/models/(?P<model>.+):(?P<method>\w+)$"), model_method, gemini)]


def models_list(names: list[str]) -> dict:
    """``GET /v1beta/models`` in Gemini's shape (one page: the gateway's list is short)."""
    return {"models": [{"name": f"models/{n}", "displayName": n, "supportedGenerationMethods": GENERATION_METHODS}
                       for n in names]}


def _models_key(request) -> str:
    auth = request.headers.get("authorization", "")
    bearer_key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    return request.headers.get("x-goog-api-key") or request.args.get("key") or bearer_key


# An entry for ``gateway.routes.models.SHAPES``: ``x-goog-api-key`` or ``?key=`` asks
# for Gemini's list shape.
MODELS_SHAPE = (lambda request: "x-goog-api-key" in request.headers or "key" in request.args,
                gemini, models_list, _models_key)
