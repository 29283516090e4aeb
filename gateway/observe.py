"""What each client request came to, told to whoever watches it: logs, metrics, traces.

One ``Served`` record per LLM call or WebSocket turn, built once at its end -- after
its settlement, or when it was refused before any -- and handed to every ``Observer``
(``Observers.tell``). Observers are called on the event loop, in the request's task:
each must be quick and must not block; one that raises is logged and the others still
hear. With no observer, no record is built.

A record holds no secret and no prompt: key *names*, model names, token counts, the
error's class and status (an error's message may quote the client's input). The one
exception is asked for explicitly: with ``Observers.prompts`` (``logging.log_prompts``)
a record carries the request's text as ``prompt``, for debugging.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from protocols.errors import GatewayError
from protocols.unified import Usage
from protocols.validate import MAX_MODEL_NAME

if TYPE_CHECKING:
    from gateway.request import Request

log = logging.getLogger("tollhouse.observe")

#: the status of an answer the client left before it began (nginx's convention)
CLIENT_CLOSED = 499


class Transport(str, Enum):
    HTTP = "http"
    WEBSOCKET = "websocket"


@attrs.frozen(kw_only=True)
class Served:
    request_id: str
    protocol: str  # the client's protocol (``protocols.*.NAME``)
    transport: Transport
    model: str | None  # as the client named it
    stream: bool
    status: int  # what the client got: 200 once the answer began, else the error's status
    duration_s: float
    key_name: str | None = None  # None until the key was recognised
    target: str | None = None  # ``provider/model`` of the attempt the charge belongs to
    provider: str | None = None
    credential: str | None = None
    attempts: int = 0  # upstream attempts made (failovers are attempts - 1)
    reason: str | None = None  # the ledger's end reason; None when nothing was reserved
    provenance: str | None = None
    usage: Usage | None = None
    cost_micro: int | None = None  # what the ledger charged
    ttfb_s: float | None = None  # until the answer's first byte left for the client
    error: str | None = None  # the error's class name
    error_kind: str | None = None  # its protocol-neutral kind (``rate_limit_error`` ...)
    prompt: list | None = None  # ``[{"role", "text"}]``, only when the observers asked for prompts


class Observer(Protocol):
    def served(self, record: Served) -> None: ...


@attrs.define
class Observers:
    """The observers of a running gateway, in the order they were added."""

    members: list = attrs.field(factory=list)
    prompts: bool = False  # records carry the request's text (``logging.log_prompts``)

    def __bool__(self) -> bool:
        return bool(self.members)

    def add(self, observer: Observer) -> None:
        self.members.append(observer)

    def tell(self, record: Served) -> None:
        for observer in self.members:
            try:
                observer.served(record)
            except Exception:  # one broken observer must not take the request or the others with it
                log.exception("observer %s failed on request %s", type(observer).__name__, record.request_id)


def status_of(exc: BaseException | None, started: bool, client_gone: bool) -> int:
    if started:
        return 200
    if isinstance(exc, GatewayError):
        return exc.status
    if client_gone or isinstance(exc, trio.Cancelled):
        return CLIENT_CLOSED
    return 500 if exc is not None else 200


def prompt_of(request: Any) -> list:
    """A request's text, system first, as ``[{"role", "text"}]`` (only for ``log_prompts``)."""
    system = [{"role": "system", "text": "".join(getattr(p, "text", "") for p in request.system)}] \
        if request.system else []
    return system + [{"role": m.role, "text": m.text()} for m in request.messages]


def from_request(req: "Request", exc: BaseException | None, transport: Transport,
                 prompts: bool = False) -> Served:
    """The record of a request the dispatcher carried (reserved, maybe answered)."""
    call = req.call
    request = call.request
    billed = req.billed_attempt()
    ending, settled = req.ending, req.charged
    now = trio.current_time()
    return Served(
        request_id=req.id, protocol=request.protocol, transport=transport, model=request.model,
        stream=request.stream, status=status_of(exc, req.started, req.client_gone),
        duration_s=now - req.created_at, key_name=req.key_name,
        target=f"{billed.provider}/{billed.model}" if billed else None,
        provider=billed.provider if billed else None, credential=billed.credential if billed else None,
        attempts=len(req.attempts),
        reason=ending.reason.value if ending is not None else None,
        provenance=ending.provenance.value if ending is not None else None,
        usage=ending.usage if ending is not None else None,
        cost_micro=settled.charged_micro + settled.overrun_micro if settled is not None else None,
        ttfb_s=req.first_byte_at - req.created_at if req.first_byte_at is not None else None,
        error=type(exc).__name__ if isinstance(exc, Exception) else None,
        error_kind=exc.kind if isinstance(exc, GatewayError) else None,
        prompt=prompt_of(request) if prompts else None)


def refused(request_id: str, protocol: str, transport: Transport, doc: Any, err: GatewayError,
            started_at: float, key_name: str | None = None) -> Served:
    """The record of a request refused before the dispatcher had it (a missing key, a
    body that is not the protocol's, an unknown ``previous_response_id``)."""
    model = doc.get("model") if isinstance(doc, dict) else None
    return Served(
        request_id=request_id, protocol=protocol, transport=transport,
        model=model[:MAX_MODEL_NAME] if isinstance(model, str) else None,
        stream=isinstance(doc, dict) and doc.get("stream") is True, status=err.status,
        duration_s=trio.current_time() - started_at, key_name=key_name,
        error=type(err).__name__, error_kind=err.kind)
