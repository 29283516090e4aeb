"""The counting front doors' shared shape: read, authenticate, count, answer.

``gateway.token_count`` decides who counts (the upstream's own endpoint, or the
gateway's estimate); this answers in the client's protocol, with
``x-tollhouse-token-count: upstream|estimate`` (and ``x-tollhouse-target`` when an
upstream counted). A client of the counting upstream's own protocol gets that
upstream's answer as sent (Gemini's has its per-modality details); any other gets the
number in its own shape.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import trio

from actors.usage import Authenticate
from gateway.routes.common import check_key_known, fresh_request_id, log, read_request_body, send_error
from gateway.token_count import Source, upstream_count
from protocols.errors import Forbidden, GatewayError, GatewayFailure
from protocols.seams import ClientCodec
from protocols.tokens import estimate_request_tokens
from protocols.unified import UnifiedRequest
from protocols.validate import load_json_object


async def serve_count(runtime: Any, client: ClientCodec, scope, receive, send, key: str | None,
                      parse: Callable[[dict], UnifiedRequest], shape: Callable[[int], dict]) -> None:
    try:
        check_key_known(runtime, key)
        body = await read_request_body(runtime, scope, receive)
        request, bad_body = _parsed(body, parse, runtime.config.server.max_json_depth)
        # one ask: the key (a stranger's bad body is still a 401), and whether it may use the model
        allowed = await _may_use(runtime, key, request.model if request is not None else None)
        if bad_body is not None:
            raise bad_body
        counted = None
        if allowed:
            counted = await upstream_count(runtime, request)
        if counted is None:
            tokens = await trio.to_thread.run_sync(estimate_request_tokens, request, abandon_on_cancel=True)
            answer = json.dumps(shape(tokens)).encode()
            headers = [(b"x-tollhouse-token-count", Source.ESTIMATE.value.encode())]
        else:
            same = counted.protocol == client.NAME
            answer = runtime.redactor.bytes(counted.body) if same else json.dumps(shape(counted.tokens)).encode()
            headers = [(b"x-tollhouse-token-count", Source.UPSTREAM.value.encode()),
                       (b"x-tollhouse-target", counted.target.encode())]
    except GatewayError as err:
        return await send_error(send, client, err)
    except Exception:
        # As in ``serve_llm``: a bug is logged and answered in the client's shape.
        log.exception("token count failed inside the gateway")
        return await send_error(send, client, GatewayFailure("The gateway failed to count this request's tokens."))
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"x-request-id", fresh_request_id().encode()), *headers]})
    await send({"type": "http.response.body", "body": answer})


def _parsed(body: bytes, parse: Callable[[dict], UnifiedRequest], depth: int
            ) -> tuple[UnifiedRequest | None, GatewayError | None]:
    """The parsed request, or the client error its body earns (answered after the key
    is checked)."""
    try:
        return parse(load_json_object(body, depth)), None
    except GatewayError as err:
        return None, err


async def _may_use(runtime: Any, key: str | None, model: str | None) -> bool:
    """Authenticate the key (raising for an unknown or disabled one) and say whether it
    may use the model: a key limited to other models is answered with the estimate,
    never with a count from an upstream it may not reach."""
    try:
        await runtime.actors.usage.ask(Authenticate(key, model))
    except Forbidden:
        if model is None:
            raise
        return False
    return True
