"""What the Chat Completions request, response and stream codecs share: names, finish
reasons, the usage object, ids and the error body."""

from __future__ import annotations

from typing import Any

from protocols.errors import GatewayError
from protocols.unified import FinishReason, Usage

NAME = "openai_chat"

FINISH_FROM_WIRE = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
    "error": FinishReason.ERROR,
}
FINISH_TO_WIRE = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.ERROR: "stop",
}


def usage_to_wire(u: Usage) -> dict:
    prompt = u.input + u.cached_input + u.cache_write
    completion = u.output + u.reasoning
    wire: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    }
    if u.cache_write:
        wire["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write
    return wire


def chat_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl-") else f"chatcmpl-{upstream_id or 'tollhouse'}"


def format_error(err: GatewayError) -> dict:
    code = {401: "invalid_api_key", 402: "insufficient_quota", 429: "rate_limit_exceeded"}.get(err.status)
    if err.status == 404 and err.param == "model":
        code = "model_not_found"
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": code}}
