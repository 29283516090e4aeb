"""Gemini stream codecs: ``GenerateContentResponse`` chunks <-> unified events.

Every chunk is a whole ``GenerateContentResponse``. Usage (``usageMetadata``) rides on
every chunk and is cumulative, so each one becomes a ``UsageReport`` and the meter keeps
the last. A function call arrives whole in one part (Gemini streams no argument
deltas), so the decoder emits its start and its complete arguments together and the
encoder holds a translated call's argument deltas until the call is complete.

Two framings carry the same chunks: SSE (``alt=sse``: ``data: {json}\\r\\n\\r\\n``) and,
without ``alt=sse``, one JSON array written element by element
(``[{...}\\r\\n,\\r\\n{...}]``, ``application/json``). The decoder reads either, given
each chunk's JSON text (an SSE event's data or a ``json_array`` element's data, both
passed as ``SSEEvent.data``); the encoder writes the one the client asked for.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any, Sequence

from protocols import json_codec
from protocols.errors import GatewayError, UpstreamProtocolError, classify_upstream
from protocols.gemini_wire import (
    FINISH_FROM_WIRE,
    FINISH_TO_WIRE,
    GENERATED_ID_PREFIX,
    NAME,
    CallIds,
    call_out,
    field,
    format_error,
    usage_to_wire,
)
from protocols.retry_after import gemini_retry_delay
from protocols.sse import SSEEvent
from protocols.unified import (
    ErrorEvent,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    UnifiedRequest,
    Usage,
    UsageReport,
)
from protocols.usage import normalize

_MARKERS = (b'"usageMetadata"', b'"error"', b'"finishReason"', b'"blockReason"')


def error_from_wire(err: Any) -> GatewayError:
    """An in-stream ``{"error": {...}}`` as the typed upstream error its code means."""
    if not isinstance(err, Mapping):
        return UpstreamProtocolError(f"upstream stream error: {err!r}"[:500])
    body = json_codec.dumps_bytes({"error": err})
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return classify_upstream(status, body, {}, gemini_retry_delay(body))


class StreamDecoder:
    """Gemini chunks -> unified events.

    With ``light=True`` (same protocol both sides, bytes forwarded as sent) a chunk is
    JSON-decoded only when it can carry usage, an error or the finish -- which for
    Gemini is most chunks, since usage rides on nearly all of them.
    """

    # Gemini has no closing event: the body's end after the chunk with finishReason is it.
    last_sequence = -1  # the protocol numbers no events
    ENDS_AT_EOF_AFTER_FINISH = True
    ended = False

    def __init__(self, *, light: bool = False) -> None:
        self.light = light
        self.started = False
        self.finished = False
        self.calls = 0
        self._ids: CallIds | None = None

    def feed(self, ev: SSEEvent) -> list[Event]:
        data = ev.data
        if data is None or not data.strip() or data == b"[DONE]":
            return []
        if self.light and self.started and not any(m in data for m in _MARKERS):
            return []
        try:
            doc = json.loads(data)
        except ValueError:
            return [ErrorEvent(UpstreamProtocolError("upstream sent a malformed Gemini stream chunk"), from_upstream=False)]
        if not isinstance(doc, Mapping):
            return [ErrorEvent(UpstreamProtocolError("upstream sent a Gemini stream chunk that is not an object"), from_upstream=False)]
        return self.feed_doc(doc)

    def feed_doc(self, doc: Mapping) -> list[Event]:
        out: list[Event] = []
        if "error" in doc:
            return [ErrorEvent(error_from_wire(doc["error"]))]
        if not self.started:
            self.started = True
            response_id = str(field(doc, "responseId") or "")
            out.append(StreamStart(response_id, str(field(doc, "modelVersion") or "")))
            tag = response_id or uuid.uuid4().hex[:12]
            self._ids = CallIds(f"{GENERATED_ID_PREFIX}{tag}_")
        candidates = doc.get("candidates") or []
        candidate = candidates[0] if candidates and isinstance(candidates[0], Mapping) else {}
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, Mapping):
                self._part(part, out)
        usage = normalize(NAME, field(doc, "usageMetadata"))
        if usage is not None:
            out.append(UsageReport(usage))
        reason = field(candidate, "finishReason")
        feedback = field(doc, "promptFeedback")
        if isinstance(feedback, Mapping) and field(feedback, "blockReason"):
            reason = "SAFETY"
        if reason and not self.finished:
            self.finished = True
            finish = FINISH_FROM_WIRE.get(reason, FinishReason.STOP)
            if finish is FinishReason.STOP and self.calls:
                finish = FinishReason.TOOL_CALLS
            out.append(Finish(finish))
        return out

    def _part(self, part: Mapping, out: list) -> None:
        signature = field(part, "thoughtSignature")
        signature = signature if isinstance(signature, str) else None
        text = part.get("text")
        if isinstance(text, str):
            if part.get("thought") is True:
                out.append(ReasoningDelta(text=text, signature=signature, issuer=NAME))
                return
            if signature:
                out.append(ReasoningDelta(signature=signature, issuer=NAME))
            if text:
                out.append(TextDelta(text))
            return
        call = field(part, "functionCall")
        if isinstance(call, Mapping):
            name = str(call.get("name") or "")
            index = self.calls
            self.calls += 1
            call_id = self._ids.call(name, call.get("id")) if self._ids else str(call.get("id") or name)
            extra = {"thoughtSignature": signature} if signature else {}
            args = call.get("args")
            out.append(ToolCallStart(index, call_id, name, extra))
            out.append(ToolCallDelta(index, json.dumps(args if args is not None else {}, ensure_ascii=False)))
            return
        if signature:
            out.append(ReasoningDelta(signature=signature, issuer=NAME))


class StreamEncoder:
    """Unified events -> Gemini chunks for a Gemini client of another upstream.

    The finish is held until ``close`` and sent in one last chunk with the usage, as
    Gemini does. In JSON-array framing ``error`` writes the error as the next element
    and closes the array. The dispatcher also calls ``error`` on a fresh encoder after
    forwarding a Gemini upstream's own bytes, so an encoder that never encoded assumes
    the array is open and holds an element, unless it was built with
    ``owns_stream=True`` (the simulator, which writes every byte itself).
    """

    def __init__(self, req: UnifiedRequest, model: str, *, owns_stream: bool = False) -> None:
        self.model = model
        extra = req.extra if isinstance(req.extra, Mapping) else {}
        self.sse = bool(extra.get("gemini_sse", True))
        self.content_type = "text/event-stream" if self.sse else "application/json"
        self.owns_stream = owns_stream
        self.id = "tollhouse"
        self.usage: Usage | None = None
        self.finish: FinishReason | None = None
        self.elements = 0
        self.closed = False
        self._signature: str | None = None
        self._calls: dict[int, list] = {}  # index -> [id, name, [argument pieces], extra]

    # ------------------------------------------------------------ framing

    def _frame(self, data: bytes) -> bytes:
        if self.sse:
            return b"data: " + data + b"\r\n\r\n"
        self.owns_stream = True
        prefix = b"[" if self.elements == 0 else b"\r\n,\r\n"
        self.elements += 1
        return prefix + data

    def _chunk(self, parts: list, finish: FinishReason | None = None) -> bytes:
        candidate: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = FINISH_TO_WIRE[finish]
        doc: dict = {"candidates": [candidate]}
        if self.usage is not None:
            doc["usageMetadata"] = usage_to_wire(self.usage)
        doc["modelVersion"] = self.model
        doc["responseId"] = self.id
        return self._frame(json_codec.dumps_bytes(doc))

    def _signed(self, part: dict) -> dict:
        if self._signature and "thoughtSignature" not in part:
            part["thoughtSignature"] = self._signature
        self._signature = None
        return part

    def _flush_calls(self, parts: list) -> None:
        for call_id, name, pieces, extra in self._calls.values():
            part = {"functionCall": call_out(ToolCallPart(call_id, name, "".join(pieces)))}
            if extra.get("thoughtSignature"):
                part["thoughtSignature"] = extra["thoughtSignature"]
            parts.append(self._signed(part))
        self._calls.clear()

    # ------------------------------------------------------------ events

    def encode(self, events: Sequence[Event]) -> bytes:
        if self.closed:
            return b""
        self.owns_stream = True
        parts: list = []
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, TextDelta):
                self._flush_calls(parts)
                parts.append(self._signed({"text": ev.text}))
            elif isinstance(ev, ReasoningDelta):
                signature = ev.signature_for(NAME)  # another vendor's would be refused by Gemini
                if ev.text:
                    self._flush_calls(parts)
                    part = {"text": ev.text, "thought": True}
                    if signature:
                        part["thoughtSignature"] = signature
                    parts.append(self._signed(part))
                elif signature:
                    self._signature = signature
            elif isinstance(ev, ToolCallStart):
                if ev.index not in self._calls:
                    self._calls[ev.index] = [ev.id, ev.name, [], dict(ev.extra)]
            elif isinstance(ev, ToolCallDelta):
                call = self._calls.setdefault(ev.index, [f"call_{ev.index}", "", [], {}])
                call[2].append(ev.arguments)
            elif isinstance(ev, UsageReport):
                self.usage = ev.usage
            elif isinstance(ev, StreamStart):
                self.id = ev.id or self.id
            elif isinstance(ev, Finish):
                self.finish = self.finish or ev.reason
            elif isinstance(ev, ErrorEvent):
                if parts:
                    out.append(self._chunk(parts))
                    parts = []
                out.append(self.error(ev.error))
                break
        if parts:
            out.append(self._chunk(parts))
        return b"".join(out)

    def _final(self) -> bytes:
        """The held finish, any complete calls and the usage, as one last chunk."""
        parts: list = []
        self._flush_calls(parts)
        if self._signature:
            parts.append(self._signed({"text": ""}))
        if self.finish is None and not parts and self.usage is None:
            return b""
        return self._chunk(parts or [{"text": ""}], self.finish)

    def resume(self, response_id: str, next_sequence: int) -> None:
        """Gemini chunks carry no sequence: nothing to continue."""

    def error(self, err: GatewayError) -> bytes:
        if self.closed:
            return b""
        head = self._final() if self.finish is not None else b""
        self._calls.clear()
        self.closed = True
        data = json_codec.dumps_bytes(format_error(err))
        if self.sse:
            return head + b"data: " + data + b"\r\n\r\n"
        opened = self.elements > 0 or not self.owns_stream
        return head + (b"\r\n,\r\n" if opened else b"[") + data + b"\r\n]"

    def close(self) -> bytes:
        if self.closed:
            return b""
        tail = self._final()
        self.closed = True
        if self.sse:
            return tail
        return tail + (b"]" if self.elements else b"[]")
