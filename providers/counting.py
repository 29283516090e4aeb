"""Token counts asked of an upstream's own counting endpoint.

Anthropic (``POST /v1/messages/count_tokens``) and Gemini (``models/{m}:countTokens``)
count a request with the model's own tokenizer, for free. The request is the one the
family would be sent for generation (the protocol's encoder, then the target's
adapters, so a system prefix is counted), cut to what the counting endpoint takes.
Families without such an endpoint have no ``count_tokens``; the gateway estimates.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from protocols.errors import UpstreamProtocolError

# What Anthropic's count_tokens accepts of a Messages body (it refuses max_tokens, stream ...).
ANTHROPIC_COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking",
                                    "mcp_servers", "context_management"})


def anthropic_body(body: Mapping[str, Any]) -> dict:
    return {k: v for k, v in body.items() if k in ANTHROPIC_COUNT_FIELDS}


def gemini_body(body: Mapping[str, Any], model: str) -> dict:
    """``countTokens`` takes a whole generate request (system instruction, tools,
    generation config) when it is wrapped, with its model, in ``generateContentRequest``."""
    name = model if model.startswith("models/") else f"models/{model}"
    return {"generateContentRequest": {**body, "model": name}}


def tokens_in(content: bytes, field: str) -> int:
    """The count in an upstream's answer; an answer without one is the upstream's fault."""
    try:
        doc = json.loads(content)
    except ValueError:
        doc = None
    value = doc.get(field) if isinstance(doc, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UpstreamProtocolError(f"the upstream's token count has no {field}")
    return value


#: the field each family answers its count in
ANTHROPIC_FIELD = "input_tokens"
GEMINI_FIELD = "totalTokens"
