"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the Anthropic front door.

Anthropic clients send their key as ``x-api-key`` (some proxies' users send a bearer
token; both are accepted). ``anthropic-version`` and ``anthropic-beta`` are not
checked but remembered in the request's ``extra``, with ``?beta=true``, so that an
Anthropic upstream receives them as the client sent them.
"""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs

import attrs

from gateway.routes.common import bearer, header, serve_llm
from gateway.routes.counting import serve_count
from protocols import anthropic_messages

PASSED_HEADERS = (b"anthropic-version", b"anthropic-beta")


def api_key(scope) -> str | None:
    return header(scope, b"x-api-key") or bearer(scope)


def _parser(scope, require_max_tokens: bool = True):
    """``parse_request`` plus what an Anthropic upstream should see of the headers."""
    passed = {name.decode(): value for name in PASSED_HEADERS if (value := header(scope, name))}
    beta_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("beta") == ["true"]

    def parse(doc: dict):
        req = anthropic_messages.parse_request(doc, require_max_tokens=require_max_tokens)
        extra = dict(req.extra, anthropic_headers=passed)
        if beta_query:
            extra["anthropic_beta_query"] = True
        return attrs.evolve(req, extra=extra)

    return parse


async def messages(runtime, scope, receive, send, match) -> None:
    await serve_llm(runtime, anthropic_messages, scope, receive, send, api_key(scope), _parser(scope))


async def count_tokens(runtime, scope, receive, send, match) -> None:
    await serve_count(runtime, anthropic_messages, scope, receive, send, api_key(scope),
                      _parser(scope, require_max_tokens=False), lambda tokens: {"input_tokens": tokens})


def models_list(names: list[str]) -> dict:
    """``GET /v1/models`` in Anthropic's shape (one page: the gateway's list is short)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = [{"type": "model", "id": n, "display_name": n, "created_at": created} for n in names]
    return {"data": data, "has_more": False, "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None}


def _models_key(request) -> str:
    auth = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") or (auth[7:].strip() if auth.lower().startswith("bearer ") else "")


# An entry for ``gateway.routes.models.SHAPES``: an ``anthropic-version`` header asks
# for Anthropic's list shape.
MODELS_SHAPE = (lambda request: "anthropic-version" in request.headers, anthropic_messages, models_list, _models_key)

ROUTES = [
    ("POST", re.compile(r"^/v1/messages/?$"), messages, anthropic_messages),
    ("POST", re.compile(r"^/v1/messages/count_tokens/?$"), count_tokens, anthropic_messages),
]
