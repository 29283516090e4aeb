"""Chat Completions streams: upstream chunks -> unified events, and back.

Pass-through decoding (``light=True``) JSON-decodes only the chunks that can carry
usage, an error or the finish; the rest are forwarded as they came.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

from protocols.errors import GatewayError, UpstreamError, UpstreamProtocolError
from protocols.openai_chat_wire import FINISH_FROM_WIRE, FINISH_TO_WIRE, NAME, chat_id, format_error, usage_to_wire
from protocols.sse import SSEEvent, encode_event
from protocols.unified import (
    ErrorEvent,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    UnifiedRequest,
    Usage,
    UsageReport,
)
from protocols.usage import normalize


def _cheap_needs_parse(data: bytes) -> bool:
    """In pass-through only chunks bearing usage, an error or a finish need decoding."""
    if b'"error"' in data:
        return True
    if b'"usage"' in data and b'"usage":null' not in data and b'"usage": null' not in data:
        return True
    return b'"finish_reason"' in data and b'"finish_reason":null' not in data and b'"finish_reason": null' not in data


class StreamDecoder:
    """Chat chunks -> unified events.

    With ``light=True`` (same protocol on both sides, bytes forwarded as sent) only the
    chunks that can carry usage or errors are JSON-decoded. After each ``feed``,
    ``usage_only`` says whether that chunk carried nothing but usage (``choices``
    empty) -- the chunk a gateway that injected ``include_usage`` must not forward.
    """

    # The protocol's last event is ``data: [DONE]``; some upstreams omit it, so the end
    # of the body after the finish chunk ends the stream too.
    last_sequence = -1  # the protocol numbers no events
    ENDS_AT_EOF_AFTER_FINISH = True

    def __init__(self, *, light: bool = False) -> None:
        self.light = light
        self.started = False
        self.finished = False
        self.ended = False  # the terminal event arrived
        self.usage_only = False
        self._tool_ids: dict[int, str] = {}

    def feed(self, ev: SSEEvent) -> list[Event]:
        self.usage_only = False
        data = ev.data
        if data is None:
            return []
        if data == b"[DONE]":
            self.ended = True
            if not self.finished:
                self.finished = True
                return [Finish(FinishReason.STOP)]
            return []
        if self.light and self.started and not _cheap_needs_parse(data):
            return []
        try:
            doc = json.loads(data)
        except ValueError:
            return [ErrorEvent(UpstreamProtocolError("upstream sent a malformed stream chunk"), from_upstream=False)]
        if not isinstance(doc, dict):
            return []
        return self.feed_doc(doc)

    def feed_doc(self, doc: dict) -> list[Event]:
        out: list[Event] = []
        if not self.started:
            self.started = True
            out.append(StreamStart(doc.get("id", ""), doc.get("model", "")))
        choices = doc.get("choices") or []
        for choice in choices[:1]:
            self._choice(choice, out)
        usage = doc.get("usage")
        if usage:
            out.append(UsageReport(normalize(NAME, usage)))
            self.usage_only = not choices
        err = doc.get("error")
        if err:
            msg = err.get("message") if isinstance(err, dict) else str(err)
            out.append(ErrorEvent(UpstreamError(str(msg or "upstream stream error"))))
        return out

    def _choice(self, choice: dict, out: list) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            out.append(ReasoningDelta(text=reasoning))
        content = delta.get("content")
        if isinstance(content, str) and content:
            out.append(TextDelta(content))
        for call in delta.get("tool_calls") or []:
            index = call.get("index", 0)
            fn = call.get("function") or {}
            if index not in self._tool_ids:
                self._tool_ids[index] = call.get("id") or f"call_{index}"
                out.append(ToolCallStart(index, self._tool_ids[index], fn.get("name") or ""))
            if isinstance(fn.get("arguments"), str) and fn["arguments"]:
                out.append(ToolCallDelta(index, fn["arguments"]))
        reason = choice.get("finish_reason")
        if reason and not self.finished:
            self.finished = True
            out.append(Finish(FINISH_FROM_WIRE.get(reason, FinishReason.STOP)))


class StreamEncoder:
    """Unified events -> Chat chunk bytes for a Chat client of a different upstream.

    Usage is held until the end and sent as the usage-only chunk only when the client
    asked for it with ``stream_options.include_usage``.
    """

    content_type = "text/event-stream"

    def __init__(self, req: UnifiedRequest, model: str) -> None:
        self.model = model
        self.include_usage = req.include_usage
        self.id = "chatcmpl-tollhouse"
        self.created = int(time.time())
        self.usage: Usage | None = None
        self._tool_index: dict[int, int] = {}
        self._finish: FinishReason | None = None
        self._failed = False

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        doc = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return encode_event(json.dumps(doc, separators=(",", ":")))

    def encode(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, TextDelta):
                out.append(self._chunk({"content": ev.text}))
            elif isinstance(ev, StreamStart):
                self.id = chat_id(ev.id)
                out.append(self._chunk({"role": "assistant", "content": ""}))
            elif isinstance(ev, ReasoningDelta):
                if ev.text:
                    out.append(self._chunk({"reasoning_content": ev.text}))
            elif isinstance(ev, ToolCallStart):
                idx = self._tool_index.setdefault(ev.index, len(self._tool_index))
                call = {"index": idx, "id": ev.id, "type": "function", "function": {"name": ev.name, "arguments": ""}}
                out.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(ev, ToolCallDelta):
                idx = self._tool_index.setdefault(ev.index, len(self._tool_index))
                out.append(self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": ev.arguments}}]}))
            elif isinstance(ev, UsageReport):
                self.usage = ev.usage
            elif isinstance(ev, Finish):
                if self._finish is None:
                    self._finish = ev.reason
                    out.append(self._chunk({}, FINISH_TO_WIRE[ev.reason]))
            elif isinstance(ev, ErrorEvent):
                out.append(self.error(ev.error))
        return b"".join(out)

    def resume(self, response_id: str, next_sequence: int) -> None:
        """Chat chunks carry no sequence: nothing to continue."""

    def error(self, err: GatewayError) -> bytes:
        self._failed = True
        return encode_event(json.dumps(format_error(err)))

    def close(self) -> bytes:
        """The closing bytes; none after an error (``[DONE]`` would read as success)."""
        if self._failed:
            return b""
        tail = b""
        if self.include_usage and self.usage is not None:
            doc = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to_wire(self.usage),
            }
            tail = encode_event(json.dumps(doc, separators=(",", ":")))
        return tail + b"data: [DONE]\n\n"
