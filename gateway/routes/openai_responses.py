"""``POST /v1/responses``: the OpenAI Responses front door (HTTP).

Codex and the openai SDK try the Responses WebSocket mode on the same path first when
configured to; until the gateway speaks it, the upgrade is refused with 426 Upgrade
Required (through the ASGI websocket denial-response extension), which Codex reads
as "use HTTP" and falls back at once instead of retrying the socket.
"""

from __future__ import annotations

import json
import re

from gateway.routes.common import bearer, serve_llm
from protocols import openai_responses

PATH = re.compile(r"^/v1/responses/?$")
WS_DENIAL_STATUS = 426


async def responses(runtime, scope, receive, send, match) -> None:
    await serve_llm(runtime, openai_responses, scope, receive, send, bearer(scope),
                    openai_responses.parse_request)


async def deny_websocket(runtime, scope, receive, send, match) -> None:
    """Refuse the upgrade with an HTTP answer (or a plain close where the server lacks
    the denial extension, which hypercorn turns into 403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": {
        "message": "WebSocket mode of the Responses API is not supported by this gateway; use HTTP POST /v1/responses.",
        "type": "invalid_request_error", "param": None, "code": "websocket_not_supported"}}).encode()
    await send({"type": "websocket.http.response.start", "status": WS_DENIAL_STATUS,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "websocket.http.response.body", "body": body})


ROUTES = [("POST", PATH, responses, openai_responses)]
WEBSOCKET_ROUTES = [(PATH, deny_websocket)]
