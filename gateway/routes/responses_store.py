"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

The stored responses of the Responses API, answered from the store actor. Every call
authenticates its bearer gateway key (a disabled key is refused as on the LLM routes);
a response is visible only to the key that created it, and any other key gets the
same 404 as an unknown id -- as does every id while the store is disabled -- so no key
learns which ids exist.

``input_items`` pages as the API does: ``order`` (``desc`` by default: the last input
item first), ``limit`` 1-100 (20), ``after`` an item id (the page starts after it, in
that order) and ``before`` an item id (the page ends before it: the ``limit`` items
closest to it). ``has_more`` says whether items remain past the page in the direction
it was read. A bad parameter is a 400 naming it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from actors.store_messages import Delete, Get, InputItems
from actors.usage_messages import Authenticate, hash_key
from gateway.routes.common import bearer, check_key_known, fresh_request_id, send_error
from protocols import openai_responses
from protocols.errors import GatewayError, GatewayFailure, InvalidRequest, StoredResponseNotFound

log = logging.getLogger("tollhouse.routes")

RESPONSE_PATH = re.compile(r"^/v1/responses/(?P<id>[^/]+)/?$")
INPUT_ITEMS_PATH = re.compile(r"^/v1/responses/(?P<id>[^/]+)/input_items/?$")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
ORDERS = ("asc", "desc")


async def retrieve(runtime, scope, receive, send, match) -> None:
    async def found(owner: str, response_id: str) -> dict:
        params = _query(scope)
        if params.get("stream", "false").lower() not in ("false", "0"):
            raise InvalidRequest("Replaying a stored response as a stream is not supported; omit stream.",
                                 param="stream")
        record = await _ask(runtime, Get(response_id, owner))
        if record is None:
            raise StoredResponseNotFound(response_id)
        return record.response

    await _answer(runtime, scope, send, match, found)


async def delete(runtime, scope, receive, send, match) -> None:
    async def deleted(owner: str, response_id: str) -> dict:
        if not await _ask(runtime, Delete(response_id, owner)):
            raise StoredResponseNotFound(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    await _answer(runtime, scope, send, match, deleted)


async def input_items(runtime, scope, receive, send, match) -> None:
    async def listed(owner: str, response_id: str) -> dict:
        page = Page.of(_query(scope))
        items = await _ask(runtime, InputItems(response_id, owner))
        if items is None:
            raise StoredResponseNotFound(response_id)
        return page.cut([_listed_item(item) for item in items])

    await _answer(runtime, scope, send, match, listed)


class Page:
    """The paging parameters of one ``input_items`` call, checked."""

    def __init__(self, after: str | None, before: str | None, limit: int, order: str) -> None:
        self.after, self.before, self.limit, self.order = after, before, limit, order

    @classmethod
    def of(cls, params: dict[str, str]) -> "Page":
        raw_limit = params.get("limit", str(DEFAULT_LIMIT))
        if not re.fullmatch(r"[0-9]{1,4}", raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}.", param="limit")
        order = params.get("order", "desc")
        if order not in ORDERS:
            raise InvalidRequest(f"order must be 'asc' or 'desc', got {order!r}.", param="order")
        after, before = params.get("after") or None, params.get("before") or None
        return cls(after, before, int(raw_limit), order)

    def cut(self, items: list[dict]) -> dict:
        ordered = items if self.order == "asc" else items[::-1]
        ids = [item["id"] for item in ordered]
        start, end = 0, len(ordered)
        if self.after is not None:
            start = self._position(ids, self.after, "after") + 1
        if self.before is not None:
            end = self._position(ids, self.before, "before")
        window = ordered[start:end]
        if self.before is not None and self.after is None:
            data = window[-self.limit:]
        else:
            data = window[:self.limit]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(window) > len(data)}

    @staticmethod
    def _position(ids: list[str], item_id: str, param: str) -> int:
        try:
            return ids.index(item_id)
        except ValueError:
            raise InvalidRequest(f"No input item with id '{item_id}' in this response.", param=param) from None


def _listed_item(item: dict) -> dict:
    """An input item in the shape the API lists it: a message has its ``type``, and its
    text content is a list of parts (the SDKs read ``content[0].text``)."""
    if "role" not in item or item.get("type", "message") != "message":
        return item
    content = item.get("content")
    if isinstance(content, str):
        part = "output_text" if item["role"] == "assistant" else "input_text"
        content = [{"type": part, "text": content}]
    return {"type": "message", **item, "content": content}


def _query(scope) -> dict[str, str]:
    try:
        return dict(parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise InvalidRequest("The query string is not valid UTF-8.") from None


async def _ask(runtime, msg: Any) -> Any:
    store = runtime.actors.store
    if store is None:
        raise StoredResponseNotFound(msg.id)
    return await store.ask(msg)


async def _answer(runtime, scope, send, match, body_for) -> None:
    """Authenticate, compute the body for the caller's key, answer JSON or the error."""
    try:
        key = bearer(scope)
        check_key_known(runtime, key)
        await runtime.actors.usage.ask(Authenticate(key))
        body = await body_for(hash_key(key), match["id"])
    except GatewayError as err:
        return await send_error(send, openai_responses, err)
    except Exception:
        log.exception("a stored response call failed inside the gateway")
        return await send_error(send, openai_responses, GatewayFailure("The gateway failed to read the store."))
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", fresh_request_id().encode())]})
    await send({"type": "http.response.body", "body": payload})


ROUTES = [
    ("GET", RESPONSE_PATH, retrieve, openai_responses),
    ("DELETE", RESPONSE_PATH, delete, openai_responses),
    ("GET", INPUT_ITEMS_PATH, input_items, openai_responses),
]
