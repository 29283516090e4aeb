"""One normalizer for every provider's usage shape.

The providers disagree on what their counts include, so each family has one mapping
row here and nowhere else:

=================  ==========================  ==========================  ===========
family             input count includes cache   output count includes        stream usage
                                                reasoning
=================  ==========================  ==========================  ===========
openai_chat        yes (cached_tokens inside)   yes (reasoning_tokens)       final chunk
openai_responses   yes (cached_tokens inside)   yes (reasoning_tokens)       completed
anthropic          no (cache read/write apart)  n/a (thinking not split)     cumulative
gemini             yes (cachedContentTokenCount) no (thoughtsTokenCount)     cumulative
=================  ==========================  ==========================  ===========

The unified ``Usage`` buckets are disjoint, so summing them never counts a token twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, overload

from protocols.unified import Usage


def _int(doc: Mapping[str, Any] | None, *path: str) -> int:
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping):
            return 0
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        return 0
    return int(node)


def _cost(doc: Mapping[str, Any]) -> str | None:
    raw = doc.get("cost")
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        return None
    try:
        return str(Decimal(str(raw)))
    except InvalidOperation:
        return None


def _openai_chat(doc: Mapping[str, Any]) -> Usage:
    prompt = _int(doc, "prompt_tokens")
    cached = _int(doc, "prompt_tokens_details", "cached_tokens")
    cache_write = _int(doc, "prompt_tokens_details", "cache_write_tokens")
    completion = _int(doc, "completion_tokens")
    # reasoning is part of completion; a provider that reports more (seen on OpenRouter)
    # must not make the total exceed what it billed
    reasoning = min(_int(doc, "completion_tokens_details", "reasoning_tokens"), completion)
    return Usage(
        input=max(prompt - cached - cache_write, 0),
        cached_input=cached,
        cache_write=cache_write,
        output=max(completion - reasoning, 0),
        reasoning=reasoning,
        cost_usd=_cost(doc),
    )


def _openai_responses(doc: Mapping[str, Any]) -> Usage:
    prompt = _int(doc, "input_tokens")
    cached = _int(doc, "input_tokens_details", "cached_tokens")
    cache_write = _int(doc, "input_tokens_details", "cache_write_tokens")
    completion = _int(doc, "output_tokens")
    reasoning = min(_int(doc, "output_tokens_details", "reasoning_tokens"), completion)
    return Usage(
        input=max(prompt - cached - cache_write, 0),
        cached_input=cached,
        cache_write=cache_write,
        output=max(completion - reasoning, 0),
        reasoning=reasoning,
        cost_usd=_cost(doc),
    )


def _anthropic(doc: Mapping[str, Any]) -> Usage:
    iterations = doc.get("iterations")
    if isinstance(iterations, list) and iterations:
        # Compaction: the top-level counts cover only the last sampling step; the
        # bill is the sum over ``iterations`` (the compaction pass included).
        steps = [_anthropic(step) for step in iterations if isinstance(step, Mapping)]
        return Usage(
            input=sum(s.input for s in steps),
            cached_input=sum(s.cached_input for s in steps),
            cache_write=sum(s.cache_write for s in steps),
            output=sum(s.output for s in steps),
            cost_usd=_cost(doc),
        )
    return Usage(
        input=_int(doc, "input_tokens"),
        cached_input=_int(doc, "cache_read_input_tokens"),
        cache_write=_int(doc, "cache_creation_input_tokens"),
        output=_int(doc, "output_tokens"),
        cost_usd=_cost(doc),
    )


def _gemini(doc: Mapping[str, Any]) -> Usage:
    prompt = _int(doc, "promptTokenCount") + _int(doc, "toolUsePromptTokenCount")
    cached = _int(doc, "cachedContentTokenCount")
    return Usage(
        input=max(prompt - cached, 0),
        cached_input=cached,
        output=_int(doc, "candidatesTokenCount"),
        reasoning=_int(doc, "thoughtsTokenCount"),
    )


NORMALIZERS: dict[str, Callable[[Mapping[str, Any]], Usage]] = {
    "openai_chat": _openai_chat,
    "openai_responses": _openai_responses,
    "anthropic": _anthropic,
    "gemini": _gemini,
}


@overload
def normalize(family: str, doc: Mapping[str, Any]) -> Usage: ...
@overload
def normalize(family: str, doc: Mapping[str, Any] | None) -> Usage | None: ...
def normalize(family: str, doc: Mapping[str, Any] | None) -> Usage | None:
    """The provider's usage object, in disjoint unified buckets (None if absent)."""
    if not isinstance(doc, Mapping):
        return None
    return NORMALIZERS[family](doc)


def merge_anthropic(previous: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Anthropic sends usage in message_start and again (cumulative) in message_delta.

    message_delta may omit fields message_start had; a later value replaces an earlier
    one, never adds to it.
    """
    merged = dict(previous)
    for key, value in update.items():
        if value is not None:
            merged[key] = value
    return merged


def estimate_tokens(text_bytes: int) -> int:
    """A conservative token estimate from a byte count: ~4 bytes per token, rounded up."""
    return (text_bytes + 3) // 4
