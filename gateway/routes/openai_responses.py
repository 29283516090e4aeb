"""``POST /v1/responses``: the OpenAI Responses front door over HTTP, and the same path
upgraded to the API's WebSocket mode (``gateway.routes.responses_ws``).

A request naming a ``previous_response_id`` is resolved into the whole conversation
before it is parsed (``gateway.conversation``): the reservation is made on what is
actually sent. An answered response is kept in the store unless the request said
``store: false``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from actors.usage import hash_key
from gateway.conversation import Keeper, resolve, wants_store
from gateway.routes.common import bearer, serve_llm
from gateway.routes.responses_ws import serve_socket
from protocols import openai_responses

PATH = re.compile(r"^/v1/responses/?$")


async def responses(runtime, scope, receive, send, match) -> None:
    async def prepare(doc: dict, key: str, size: int) -> tuple[Any, Keeper | None, int]:
        store = runtime.actors.store
        owner = hash_key(key)
        chained = await resolve(doc, owner, store, None)
        request = openai_responses.parse_request(chained.doc)
        keeper = None
        if store is not None and wants_store(doc):
            keeper = Keeper(owner, chained, request.model, store)
        if chained.history:
            size += len(json.dumps(chained.history))
        return request, keeper, size

    await serve_llm(runtime, openai_responses, scope, receive, send, bearer(scope),
                    openai_responses.parse_request, prepare)


ROUTES = [("POST", PATH, responses, openai_responses)]
WEBSOCKET_ROUTES = [(PATH, serve_socket)]
