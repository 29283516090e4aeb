"""Anthropic Messages vocabulary shared by its request and stream codecs.

Kept apart from ``anthropic_messages`` (requests, responses) and ``anthropic_stream``
(SSE codecs) so that both can use the same tables without importing each other: stop
reasons, error types in both directions, the usage object, the ``msg_`` id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.errors import (
    GatewayError,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from protocols.unified import FinishReason, Usage

NAME = "anthropic"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; other protocols may omit it

FINISH_FROM_WIRE = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}
FINISH_TO_WIRE = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.ERROR: "end_turn",
}


def stop_reason(finish: FinishReason, stop_sequence: str | None = None) -> str:
    """The wire stop reason; a known matched stop sequence says ``stop_sequence``."""
    if finish is FinishReason.STOP and stop_sequence:
        return "stop_sequence"
    return FINISH_TO_WIRE[finish]


# ---------------------------------------------------------------- errors

# Anthropic's error types by the status a client sees (docs: "Errors"); 402 is billing.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Errors whose type does not follow from their status alone.
ERROR_TYPE_BY_CLASS: dict[type, str] = {
    UpstreamOverloaded: "overloaded_error",
}


def error_type(err: GatewayError) -> str:
    for cls, name in ERROR_TYPE_BY_CLASS.items():
        if isinstance(err, cls):
            return name
    found = ERROR_TYPES.get(err.status)
    if found is not None:
        return found
    return "invalid_request_error" if err.status < 500 else "api_error"


def format_error(err: GatewayError) -> dict:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type(err), "message": err.message}}


# wire error type -> (error class, status it carries)
ERRORS_FROM_WIRE: dict[str, tuple[type, int]] = {
    "overloaded_error": (UpstreamOverloaded, 529),
    "rate_limit_error": (UpstreamRateLimited, 429),
    "billing_error": (UpstreamQuotaExhausted, 429),
    "authentication_error": (UpstreamAuthError, 502),
    "permission_error": (UpstreamAuthError, 502),
    "invalid_request_error": (UpstreamBadRequest, 400),
    "not_found_error": (UpstreamBadRequest, 404),
    "request_too_large": (UpstreamBadRequest, 413),
    "timeout_error": (UpstreamTimeout, 504),
    "api_error": (UpstreamServerError, 502),
}


def error_from_wire(doc: Any) -> UpstreamError:
    """An in-stream ``error`` event's body as the error tree's class for its type."""
    err = doc.get("error") if isinstance(doc, Mapping) else None
    if not isinstance(err, Mapping):
        return UpstreamServerError("upstream stream error")
    kind = str(err.get("type") or "api_error")
    cls, status = ERRORS_FROM_WIRE.get(kind, (UpstreamServerError, 502))
    message = str(err.get("message") or kind)
    return cls(message, status=status, upstream_status=200)


# ---------------------------------------------------------------- usage and ids


def usage_to_wire(u: Usage | None) -> dict:
    """Anthropic's usage object. Its ``output_tokens`` includes thinking tokens."""
    if u is None:
        return {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": u.input,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached_input,
        "output_tokens": u.output + u.reasoning,
    }


def message_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id or 'tollhouse'}"
