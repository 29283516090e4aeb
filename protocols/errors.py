"""The one error tree. Every failure a client can see is one of these.

::

    GatewayError                      status  what
    ├── ClientError                   400     the request itself is wrong
    │   ├── InvalidRequest            400     malformed JSON, wrong types, missing fields
    │   ├── Unauthenticated           401     missing or unknown gateway key
    │   ├── Forbidden                 403     key may not use this model / admin route
    │   ├── NotFound                  404     unknown model or route
    │   │   └── StoredResponseNotFound 404    a stored response unknown, gone or another key's
    │   ├── MethodNotAllowed          405
    │   ├── RequestTimeout            408     the request body did not arrive in time
    │   ├── PayloadTooLarge           413
    │   ├── UpgradeRequired           426     a WebSocket upgrade where the mode is off
    │   └── KeyRateLimited            429     the gateway key's own limits
    ├── OutOfCredit                   402     the key's balance cannot cover the hold
    ├── NoCapacity                    503     every target cooling or busy (retry_after)
    ├── LedgerUnavailable             503     the ledger cannot be written: no new holds
    ├── Stopping                      503     the gateway's grace period ended mid-request
    ├── GatewayFailure                500     a bug or broken invariant in the gateway
    └── UpstreamError                 502     the provider failed; subclasses classify how
        ├── UpstreamRateLimited       429     short-term rate limit (retry_after known)
        ├── UpstreamQuotaExhausted    429     billing/quota: long cooldown or dead
        ├── UpstreamOverloaded        529/503 provider-wide overload
        ├── UpstreamServerError       502     5xx
        ├── UpstreamTimeout           504     no first byte, or a stall, past the deadline
        ├── UpstreamAuthError         502     the gateway's credential was refused
        ├── UpstreamBadRequest        400     the provider rejected the request itself
        │   └── UpstreamContextTooLong 400
        └── UpstreamProtocolError     502     the provider spoke nonsense

Each error knows the status a client should see; each protocol module renders it in
its own wire shape; the cooldown actor decides on these types, never on raw ints.
"""

from __future__ import annotations

from typing import Any, Mapping

from protocols.redact import NO_SECRETS, Redactor


class GatewayError(Exception):
    status: int = 500
    kind: str = "api_error"
    #: the gateway key's name when the refusal came after the key was recognised (for logs)
    key_name: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        upstream_status: int | None = None,
        upstream_body: bytes | None = None,
        upstream_headers: Mapping[str, str] | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.param = param
        self.upstream_status = upstream_status
        self.upstream_body = upstream_body
        self.upstream_headers = dict(upstream_headers or {})
        # False only when the transport proved that no byte of the request left the
        # gateway (connect failed, a dead pooled connection found before writing): the
        # one case in which an upstream failure cannot have cost upstream work.
        self.request_sent = request_sent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"

    def detail(self) -> Mapping[str, Any]:
        return {"type": type(self).__name__, "status": self.status, "message": self.message}


class ClientError(GatewayError):
    status = 400
    kind = "invalid_request_error"


class InvalidRequest(ClientError):
    status = 400


class Unauthenticated(ClientError):
    status = 401
    kind = "authentication_error"


class Forbidden(ClientError):
    status = 403
    kind = "permission_error"


class NotFound(ClientError):
    status = 404
    kind = "not_found_error"


class StoredResponseNotFound(NotFound):
    """A stored response the caller may not see: unknown, deleted, expired or another
    key's. One answer for all of them, so no key learns which ids exist; its shape is
    the Responses API's own (``invalid_request_error``, no param, no code)."""

    kind = "invalid_request_error"

    def __init__(self, response_id: str) -> None:
        super().__init__(f"Response with id '{response_id}' not found.")
        self.response_id = response_id


class MethodNotAllowed(ClientError):
    status = 405


class RequestTimeout(ClientError):
    status = 408


class PayloadTooLarge(ClientError):
    status = 413
    kind = "request_too_large"


class UpgradeRequired(ClientError):
    """A WebSocket upgrade the gateway does not take (its mode is switched off): the
    client should use plain HTTP, as Codex does at once on a 426."""

    status = 426


class KeyRateLimited(ClientError):
    status = 429
    kind = "rate_limit_error"


class OutOfCredit(GatewayError):
    status = 402
    kind = "insufficient_quota"


class NoCapacity(GatewayError):
    status = 503
    kind = "overloaded_error"


class LedgerUnavailable(GatewayError):
    status = 503
    kind = "overloaded_error"


class Stopping(GatewayError):
    status = 503
    kind = "overloaded_error"


class GatewayFailure(GatewayError):
    status = 500
    kind = "api_error"


class UpstreamError(GatewayError):
    status = 502
    kind = "api_error"


class UpstreamRateLimited(UpstreamError):
    status = 429
    kind = "rate_limit_error"


class UpstreamQuotaExhausted(UpstreamError):
    status = 429
    kind = "insufficient_quota"


class UpstreamOverloaded(UpstreamError):
    status = 503
    kind = "overloaded_error"


class UpstreamServerError(UpstreamError):
    status = 502


class UpstreamConnectionsBusy(UpstreamError):
    """The gateway's connections to the upstream were all busy for ``connect_timeout_s``
    (its ``max_connections``): nothing was sent, and the upstream is not to blame."""

    status = 503
    kind = "overloaded_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    kind = "timeout_error"


class UpstreamAuthError(UpstreamError):
    status = 502


class UpstreamBadRequest(UpstreamError):
    status = 400
    kind = "invalid_request_error"


class UpstreamContextTooLong(UpstreamBadRequest):
    status = 400


class UpstreamProtocolError(UpstreamError):
    status = 502


_QUOTA_WORDS = ("quota", "billing", "insufficient_quota", "credit balance")
_CONTEXT_WORDS = ("context length", "context_length", "too long", "maximum context", "prompt is too long")


def classify_upstream(
    status: int, body: bytes, headers: Mapping[str, str], retry_after: float | None,
    redactor: Redactor = NO_SECRETS,
) -> UpstreamError:
    """Map an upstream's non-success answer onto the tree, once, at the boundary. The
    body and headers kept on the error, and the message drawn from them, have every
    secret the ``redactor`` knows removed: an upstream may quote the key it was sent."""
    body = redactor.bytes(body)
    headers = {k: redactor.text(v) for k, v in headers.items()}
    text = body[:4096].decode("utf-8", "replace")
    lowered = text.lower()
    message = _message_from_body(text) or f"upstream answered {status}"
    kwargs: dict[str, Any] = dict(
        retry_after=retry_after, upstream_status=status, upstream_body=body, upstream_headers=headers
    )
    if status == 429:
        # A per-minute quota with a retry hint (Gemini's RetryInfo) is a rate limit; an
        # exhausted balance (OpenAI's insufficient_quota, billing with no hint) is not.
        if "insufficient_quota" in lowered or (retry_after is None and any(w in lowered for w in _QUOTA_WORDS)
                                               and "rate limit" not in lowered):
            return UpstreamQuotaExhausted(message, **kwargs)
        return UpstreamRateLimited(message, **kwargs)
    if status in (401, 403):
        return UpstreamAuthError(message, **kwargs)
    if status == 402:
        return UpstreamQuotaExhausted(message, status=429, **kwargs)
    if status in (503, 529):
        return UpstreamOverloaded(message, status=status, **kwargs)
    if status == 504 or status == 408:
        return UpstreamTimeout(message, **kwargs)
    if status >= 500:
        return UpstreamServerError(message, **kwargs)
    if any(w in lowered for w in _CONTEXT_WORDS):
        return UpstreamContextTooLong(message, status=status, **kwargs)
    return UpstreamBadRequest(message, status=status if status in (400, 404, 413, 422) else 400, **kwargs)


def _message_from_body(text: str) -> str | None:
    """Best-effort human message out of any provider's error JSON."""
    import json

    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()[:500] or None
    if isinstance(doc, list) and doc:
        doc = doc[0]
    if not isinstance(doc, dict):
        return None
    err = doc.get("error", doc)
    if isinstance(err, dict):
        msg = err.get("message")
    else:
        msg = err if isinstance(err, str) else doc.get("message")
    if msg is None:
        msg = doc.get("message")
    if isinstance(msg, (dict, list)):
        msg = json.dumps(msg)
    return str(msg)[:1000] if msg else None
