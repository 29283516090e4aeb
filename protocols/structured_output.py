"""Structured output across protocols, and the answer tool for upstreams without it.

Each protocol names JSON output its own way (Chat ``response_format``, Responses
``text.format``, Gemini ``responseMimeType`` with ``responseJsonSchema`` or
``responseSchema``, Anthropic ``output_config.format``); each module reads and writes
its own into ``unified.OutputFormat``. Anthropic models before the 4.5 generation have
no JSON output: there the request offers one extra tool, ``ANSWER_TOOL``, whose input
schema is the requested schema, and forces it; the call it makes is the answer, turned
back into text here (``unwrap_response`` whole, ``AnswerToolDecoder`` streamed), so the
client never sees the tool.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from protocols.seams import StreamDecoder
from protocols.sse import SSEEvent
from protocols.unified import (
    Event,
    Finish,
    FinishReason,
    OutputFormat,
    OutputKind,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    UnifiedRequest,
    UnifiedResponse,
)

ANSWER_TOOL = "structured_answer"
ANY_OBJECT = {"type": "object"}
# claude-<family>-<major>[-<minor>][-<date>]: JSON output from 4.5 on.
_CLAUDE = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d{1,2}))?(?:[-@.]|$)")


def anthropic_has_json_output(model: str) -> bool:
    """Whether an Anthropic model takes ``output_config.format`` (Claude 4.5 and later)."""
    match = _CLAUDE.search(model)
    if match is None:
        return False
    return (int(match.group(1)), int(match.group(2) or 0)) >= (4, 5)


def answer_tool(req: UnifiedRequest, model: str) -> str | None:
    """The answer tool's name when an Anthropic upstream request for ``model`` needs one."""
    fmt = req.output_format
    if fmt is None or req.protocol == "anthropic":
        return None
    if fmt.kind is OutputKind.JSON_SCHEMA and anthropic_has_json_output(model):
        return None
    return ANSWER_TOOL


def answer_schema(fmt: OutputFormat) -> dict:
    return dict(fmt.schema) if fmt.kind is OutputKind.JSON_SCHEMA and fmt.schema else dict(ANY_OBJECT)


def unwrap_response(resp: UnifiedResponse, tool: str | None) -> UnifiedResponse:
    """The answer tool's call as the answer's text."""
    if tool is None:
        return resp
    parts: list = []
    answered = False
    for p in resp.parts:
        if isinstance(p, ToolCallPart) and p.name == tool:
            parts.append(TextPart(p.arguments))
            answered = True
        else:
            parts.append(p)
    if not answered:
        return resp
    finish = resp.finish
    if finish is FinishReason.TOOL_CALLS and not any(isinstance(p, ToolCallPart) for p in parts):
        finish = FinishReason.STOP
    return attrs.evolve(resp, parts=tuple(parts), finish=finish)


class AnswerToolDecoder:
    """A stream decoder whose answer-tool call comes out as text deltas.

    Wraps the upstream protocol's decoder; everything but ``feed`` is the inner one's.
    """

    def __init__(self, inner: StreamDecoder, tool: str) -> None:
        self.inner = inner
        self.tool = tool
        self._answer: int | None = None
        self._other_calls = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def feed(self, ev: SSEEvent) -> list[Event]:
        return [out for e in self.inner.feed(ev) if (out := self._map(e)) is not None]

    def _map(self, e: Event) -> Event | None:
        if isinstance(e, ToolCallStart):
            if e.name == self.tool and self._answer is None:
                self._answer = e.index
                return None
            self._other_calls = True
            return e
        if isinstance(e, ToolCallDelta) and e.index == self._answer:
            return TextDelta(e.arguments) if e.arguments else None
        if isinstance(e, Finish) and e.reason is FinishReason.TOOL_CALLS and self._answer is not None \
                and not self._other_calls:
            return Finish(FinishReason.STOP)
        return e
