"""Wire shapes the Responses codecs share: output items, usage, the response object.

Both the whole-response formatter and the stream encoder's ``response.completed``
must describe the same object, and both decoders must read output items and error
codes the same way, so those shapes live here once. Everything is a pure function of
its arguments; ids are minted by the caller.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Iterable

from protocols.errors import (
    GatewayError,
    NoCapacity,
    OutOfCredit,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamContextTooLong,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamServerError,
    UpstreamTimeout,
)
from protocols.tool_names import NamespacedNames
from protocols.unified import (
    FinishReason,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    Usage,
)

NAME = "openai_responses"

# incomplete_details.reason <-> unified finish reasons
INCOMPLETE_FROM_WIRE: dict[str | None, FinishReason] = {
    "max_output_tokens": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}
INCOMPLETE_TO_WIRE = {reason: wire for wire, reason in INCOMPLETE_FROM_WIRE.items()}

TOOL_CALL_ITEMS = frozenset({"function_call", "custom_tool_call"})

# An upstream's error code (``error`` event, ``response.failed``) -> the error tree.
_ERRORS_BY_CODE: dict[str, type] = {
    "rate_limit_exceeded": UpstreamRateLimited,
    "rate_limit_error": UpstreamRateLimited,
    "insufficient_quota": UpstreamQuotaExhausted,
    "usage_not_included": UpstreamQuotaExhausted,
    "server_is_overloaded": UpstreamOverloaded,
    "slow_down": UpstreamOverloaded,
    "overloaded_error": UpstreamOverloaded,
    "server_error": UpstreamServerError,
    "internal_error": UpstreamServerError,
    "context_length_exceeded": UpstreamContextTooLong,
    "invalid_prompt": UpstreamBadRequest,
    "invalid_request_error": UpstreamBadRequest,
    "invalid_api_key": UpstreamAuthError,
    "authentication_error": UpstreamAuthError,
    "timeout": UpstreamTimeout,
}

# The error tree -> the code a Responses client reads in ``response.failed``; the
# most specific class wins (looked up along the MRO).
_CODES_BY_ERROR: dict[type, str] = {
    UpstreamRateLimited: "rate_limit_exceeded",
    UpstreamQuotaExhausted: "insufficient_quota",
    OutOfCredit: "insufficient_quota",
    UpstreamOverloaded: "server_is_overloaded",
    NoCapacity: "server_is_overloaded",
    UpstreamContextTooLong: "context_length_exceeded",
    UpstreamBadRequest: "invalid_prompt",
    UpstreamTimeout: "timeout",
    GatewayError: "server_error",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_id(upstream_id: str) -> str:
    """A ``resp_`` id for the client, keeping the upstream's when it already is one."""
    if upstream_id.startswith("resp_"):
        return upstream_id
    return f"resp_{upstream_id}" if upstream_id else new_id("resp")


def usage_to_wire(u: Usage) -> dict:
    """Disjoint unified buckets -> Responses counts (input includes cached, output reasoning).

    Cache writes (an Anthropic upstream's) go in ``input_tokens_details.cache_write_tokens``,
    the name Chat's ``prompt_tokens_details`` uses for them, when there are any."""
    prompt = u.input + u.cached_input + u.cache_write
    completion = u.output + u.reasoning
    wire: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": u.cached_input},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": prompt + completion,
    }
    if u.cache_write:
        wire["input_tokens_details"]["cache_write_tokens"] = u.cache_write
    return wire


def error_code(err: GatewayError) -> str:
    for cls in type(err).__mro__:
        if cls in _CODES_BY_ERROR:
            return _CODES_BY_ERROR[cls]
    return "server_error"


def error_from_wire(err: Any, fallback: str) -> UpstreamError:
    """An upstream's in-stream error object ({code, type, message}) as a tree error."""
    if not isinstance(err, Mapping):
        return UpstreamServerError(str(err or fallback))
    message = err.get("message")
    if not isinstance(message, str) or not message:
        message = fallback
    cls = _ERRORS_BY_CODE.get(str(err.get("code") or "")) or _ERRORS_BY_CODE.get(str(err.get("type") or ""))
    body = json.dumps({"error": dict(err)}).encode()
    return (cls or UpstreamServerError)(message, upstream_body=body, param=_str_or_none(err.get("param")))


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------- output items


def reasoning_item(item_id: str, text: str, encrypted: str | None) -> dict:
    item: dict = {"id": item_id, "type": "reasoning",
                  "summary": [{"type": "summary_text", "text": text}] if text else []}
    if encrypted:
        item["encrypted_content"] = encrypted
    return item


def message_item(item_id: str, text: str) -> dict:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed",
                       names: NamespacedNames | None = None) -> dict:
    """A ``function_call`` item; a flattened namespace tool's name (``names``) is
    given back as the namespace and its inner name."""
    namespace, inner = names.split(name) if names is not None else (None, name)
    item = {"id": item_id, "type": "function_call", "status": status, "arguments": arguments,
            "call_id": call_id, "name": inner}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def output_items(parts: Iterable, names: NamespacedNames | None = None) -> list:
    """Unified response parts -> Responses output items, in order.

    Consecutive text parts form one message item; ids a Responses upstream gave
    (kept in ``extra``) are reused so a client can refer back to them.
    """
    items: list = []
    text: list[str] = []

    def flush() -> None:
        if text:
            items.append(message_item(new_id("msg"), "".join(text)))
            text.clear()

    for part in parts:
        if isinstance(part, TextPart):
            text.append(part.text)
            continue
        flush()
        if isinstance(part, ReasoningPart):
            rid = part.extra.get("id") or new_id("rs")
            items.append(reasoning_item(rid, part.text, part.redacted_for(NAME)))
        elif isinstance(part, ToolCallPart):
            items.append(function_call_item(part.extra.get("id") or new_id("fc"), part.id, part.name, part.arguments,
                                            names=names))
    flush()
    return items


def response_object(
    rid: str,
    model: str,
    created_at: int,
    *,
    status: str,
    output: list,
    usage: Usage | None,
    finish: FinishReason | None = None,
    error: dict | None = None,
) -> dict:
    """The ``response`` object of a whole answer and of every lifecycle stream event."""
    incomplete = INCOMPLETE_TO_WIRE.get(finish) if finish is not None else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage_to_wire(usage) if usage is not None else None,
        "user": None,
        "metadata": {},
    }


def status_for(finish: FinishReason | None) -> str:
    return "incomplete" if finish in INCOMPLETE_TO_WIRE else "completed"


def finish_from_response(doc: Mapping[str, Any], saw_tool_call: bool = False) -> FinishReason:
    """Why a Responses answer ended, from its status, incomplete_details and output."""
    if doc.get("status") == "incomplete":
        details = doc.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return INCOMPLETE_FROM_WIRE.get(reason, FinishReason.LENGTH)
    output = doc.get("output")
    if saw_tool_call or (isinstance(output, list) and any(
            isinstance(i, Mapping) and i.get("type") in TOOL_CALL_ITEMS for i in output)):
        return FinishReason.TOOL_CALLS
    return FinishReason.STOP
