"""Chained Responses turns: ``previous_response_id`` in, a whole conversation out.

A Responses client may send only its new input and name the response it follows. The
gateway resolves that name itself -- from the WebSocket connection's own last response
(which works with ``store: false``, as the API's connection-local cache does), else
from the store (responses kept for the key that made them) -- and sends every upstream
the whole conversation: the previous responses' input and output items, oldest first,
then the new input. No upstream ever gets ``previous_response_id``: a Chat, Anthropic
or Gemini upstream could not use it, and a Responses upstream reached through another
credential or provider after a failover never saw that id. ``instructions`` are not
inherited (the API's rule): each request carries its own.

After the answer is settled, and before the client has its last byte, the ``Keeper``
records it -- in the connection's cache and, unless the request said ``store: false``,
in the store -- so the client's next turn finds it however fast it comes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs

from actors.mailbox import Mailbox
from actors.store import Chain, Put, StoredResponse
from protocols.errors import InvalidRequest, NotFound

log = logging.getLogger("tollhouse.store")

#: the body fields a turn on a WebSocket carries that are not part of the HTTP body
SOCKET_ONLY_FIELDS = ("type", "generate")


def input_items(raw: Any) -> tuple[dict, ...]:
    """A request's ``input`` as items (a bare string is one user message)."""
    if isinstance(raw, str):
        return ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]},)
    if isinstance(raw, list):
        return tuple(raw)
    if raw is None:
        return ()
    raise InvalidRequest("Invalid type for 'input': expected a string or an array.", param="input")


def wants_store(doc: dict) -> bool:
    """``store`` defaults to true in the API; only an explicit false opts out."""
    return doc.get("store", True) is not False


@attrs.define
class LastResponse:
    """A WebSocket connection's latest response: its id and the whole conversation up to
    and including its output."""

    id: str
    conversation: tuple[dict, ...]


@attrs.frozen
class Chained:
    """A request body with its ``previous_response_id`` resolved."""

    doc: dict  # what is parsed and sent: the whole conversation in ``input``
    own_input: tuple[dict, ...]  # the items this request itself sent
    previous_id: str | None
    history: tuple[dict, ...]  # the conversation before ``own_input``


class PreviousResponseNotFound(NotFound):
    kind = "invalid_request_error"  # the API's type for it


def not_found(previous: str) -> NotFound:
    return PreviousResponseNotFound(f"Previous response with id '{previous}' not found.",
                                    param="previous_response_id")


async def resolve(doc: dict, owner: str, store: Mailbox | None, last: LastResponse | None) -> Chained:
    """``doc`` with its ``previous_response_id`` replaced by the conversation it names.

    An id neither the connection nor the store knows for this key (another key's
    response included) is a 404, as the API answers."""
    own = input_items(doc.get("input"))
    previous = doc.get("previous_response_id")
    if previous is None:
        return Chained(doc, own, None, ())
    if not isinstance(previous, str) or not previous:
        raise InvalidRequest("Invalid type for 'previous_response_id': expected a string.",
                             param="previous_response_id")
    if last is not None and last.id == previous:
        history = last.conversation
    elif store is not None:
        found = await store.ask(Chain(previous, owner))
        if found is None:
            raise not_found(previous)
        history = tuple(found)
    else:
        raise not_found(previous)
    body = {key: value for key, value in doc.items() if key != "previous_response_id"}
    body["input"] = [*history, *own]
    return Chained(body, own, previous, history)


@attrs.define
class Keeper:
    """Records the answered response of one request (``gateway.request.Recorder``)."""

    owner: str
    chained: Chained
    model: str
    store: Mailbox | None  # None: not to be stored (``store: false``, or no store)
    connection: Any = None  # a WebSocket connection with a ``last`` LastResponse, or None
    kept: str | None = None  # the id recorded, once it is

    def record(self, req: Any, response: dict) -> None:
        response_id = response.get("id")
        if not isinstance(response_id, str) or not response_id:
            return
        output = tuple(item for item in response.get("output") or () if isinstance(item, dict))
        self.kept = response_id
        if self.connection is not None:
            self.connection.last = LastResponse(response_id, (*self.chained.history, *self.chained.own_input,
                                                              *output))
        if self.store is not None:
            billed = req.billed_attempt() if req is not None else None
            created = response.get("created_at")
            kept = self.store.tell_nowait(Put(StoredResponse(
                id=response_id, owner=self.owner, previous_id=self.chained.previous_id, model=self.model,
                provider=billed.provider if billed else None, credential=billed.credential if billed else None,
                input=self.chained.own_input,
                # what a later GET shows: the chain as the client made it, not as upstreams saw it
                response={**response, "previous_response_id": self.chained.previous_id, "store": True},
                created_at=float(created) if isinstance(created, (int, float)) else time.time())))
            if not kept:
                log.warning("response %s not stored: the store's inbox is full", response_id)
