"""Where each wire protocol keeps the fields adapters touch.

Adapters edit an upstream request's JSON body (the one the protocol codec built, or on
a same-protocol pass-through the client's own), so they need to know, per protocol,
where the output-token limit, the sampling parameters and the system prompt live.
Paths are dotted (``generationConfig.topP``). Edits copy every object on the way to
the field they change: a pass-through body shares its nested objects with the
client's parsed request, which must stay as the client sent it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

_MISSING = object()


@attrs.frozen
class WireFields:
    """One protocol's field paths; ``max_tokens`` lists every name the limit goes by,
    the one a translated request is built with first."""

    max_tokens: tuple[str, ...]
    temperature: str
    top_p: str


FIELDS: Mapping[str, WireFields] = {
    "openai_chat": WireFields(("max_tokens", "max_completion_tokens"), "temperature", "top_p"),
    "openai_responses": WireFields(("max_output_tokens",), "temperature", "top_p"),
    "anthropic": WireFields(("max_tokens",), "temperature", "top_p"),
    "gemini": WireFields(("generationConfig.maxOutputTokens",), "generationConfig.temperature",
                         "generationConfig.topP"),
}


def get(body: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def has(body: Mapping[str, Any], path: str) -> bool:
    return get(body, path, _MISSING) is not _MISSING


def put(body: dict, path: str, value: Any) -> None:
    """Set ``path`` in ``body`` (in place at the top; nested objects copied on the way)."""
    *parents, last = path.split(".")
    node = body
    for part in parents:
        child = node.get(part)
        child = dict(child) if isinstance(child, Mapping) else {}
        node[part] = child
        node = child
    node[last] = value


def pop(body: dict, path: str) -> Any:
    """Remove ``path`` from ``body`` and return its value (None when it is absent);
    nested objects on the way are copied, never edited in place."""
    if not has(body, path):
        return None
    *parents, last = path.split(".")
    node = body
    for part in parents:
        child = dict(node[part])
        node[part] = child
        node = child
    return node.pop(last)
