"""Anthropic Messages streams: wire events <-> unified events.

An Anthropic stream is a sequence of typed SSE events: ``message_start`` (id, model,
usage so far), then per content block ``content_block_start`` / ``_delta`` /
``_stop`` (each with the block's ``index``), then ``message_delta`` (stop reason and
usage) and ``message_stop``; ``ping`` may come anywhere and ``error`` may end the
stream early. Usage is cumulative: ``message_delta`` repeats or replaces what
``message_start`` said, so the decoder merges the two (a later field replaces an
earlier one) and reports the merged whole -- never a sum.

Tool calls are numbered in the order their blocks start (the unified ``index``), not
by block index, which also counts text and thinking blocks. A tool block whose input
arrives as nothing but empty ``partial_json`` (a call without arguments) is reported
with arguments ``{}`` when the block stops, so every consumer sees valid JSON.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import attrs

from protocols import json_codec
from protocols.anthropic_wire import (
    FINISH_FROM_WIRE,
    NAME,
    error_from_wire,
    format_error,
    message_id,
    stop_reason,
    usage_to_wire,
)
from protocols.errors import GatewayError, UpstreamProtocolError
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
from protocols.usage import merge_anthropic, normalize

# Events a pass-through decoder need not open: they carry no usage, error or finish.
LIGHT_SKIP = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "ping"})


@attrs.define
class _Block:
    """What the decoder remembers about one open content block."""

    kind: str
    tool: int | None = None
    input: Any = None
    args_seen: bool = False


class StreamDecoder:
    """Anthropic SSE events -> unified events.

    With ``light=True`` (Anthropic on both sides, bytes forwarded as sent) content
    block events are not JSON-decoded at all; only ``message_start``,
    ``message_delta``, ``message_stop`` and ``error`` are, for usage, finish and errors.
    """

    usage_only = False  # Anthropic streams have no chunk the gateway must hide
    last_sequence = -1  # the protocol numbers no events
    ENDS_AT_EOF_AFTER_FINISH = False  # only ``message_stop`` ends a stream

    def __init__(self, *, light: bool = False) -> None:
        self.light = light
        self.started = False
        self.finished = False
        self.ended = False  # message_stop arrived
        self._usage: dict = {}
        self._blocks: dict[int, _Block] = {}
        self._tools = 0

    def feed(self, ev: SSEEvent) -> list[Event]:
        data = ev.data
        if data is None:
            return []
        if self.light and self.started and ev.event in LIGHT_SKIP:
            return []
        try:
            doc = json.loads(data)
        except ValueError:
            return [ErrorEvent(UpstreamProtocolError("upstream sent a malformed stream event"), from_upstream=False)]
        if not isinstance(doc, dict):
            return []
        handler = _DECODERS.get(doc.get("type") or ev.event or "")
        return handler(self, doc) if handler else []

    def _message_start(self, doc: dict) -> list[Event]:
        message = doc.get("message") or {}
        out: list[Event] = []
        if not self.started:
            self.started = True
            out.append(StreamStart(str(message.get("id", "")), str(message.get("model", ""))))
        out.extend(self._usage_report(message.get("usage")))
        return out

    def _usage_report(self, usage: Any) -> list[Event]:
        if not isinstance(usage, dict):
            return []
        self._usage = merge_anthropic(self._usage, usage)
        return [UsageReport(normalize(NAME, self._usage))]

    def _block_start(self, doc: dict) -> list[Event]:
        self.started = True
        block = doc.get("content_block") or {}
        kind = str(block.get("type", ""))
        state = _Block(kind)
        self._blocks[_index(doc)] = state
        if kind == "tool_use":
            state.tool, state.input = self._tools, block.get("input")
            self._tools += 1
            return [ToolCallStart(state.tool, str(block.get("id", "")), str(block.get("name", "")))]
        if kind == "text" and block.get("text"):
            return [TextDelta(block["text"])]
        if kind == "thinking":
            out: list[Event] = [ReasoningDelta(text=block["thinking"], issuer=NAME)] if block.get("thinking") else []
            if block.get("signature"):
                out.append(ReasoningDelta(signature=block["signature"], issuer=NAME))
            return out
        if kind == "redacted_thinking":
            return [ReasoningDelta(redacted=str(block.get("data", "")), issuer=NAME)]
        return []

    def _block_delta(self, doc: dict) -> list[Event]:
        delta = doc.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [TextDelta(delta["text"])] if delta.get("text") else []
        if kind == "input_json_delta":
            state = self._blocks.get(_index(doc))
            if state is None or state.tool is None or not delta.get("partial_json"):
                return []
            state.args_seen = True
            return [ToolCallDelta(state.tool, delta["partial_json"])]
        if kind == "thinking_delta":
            return [ReasoningDelta(text=delta["thinking"], issuer=NAME)] if delta.get("thinking") else []
        if kind == "signature_delta":
            return [ReasoningDelta(signature=delta["signature"], issuer=NAME)] if delta.get("signature") else []
        return []

    def _block_stop(self, doc: dict) -> list[Event]:
        state = self._blocks.pop(_index(doc), None)
        if state is None or state.tool is None or state.args_seen:
            return []
        args = json.dumps(state.input, ensure_ascii=False) if state.input else "{}"
        return [ToolCallDelta(state.tool, args)]

    def _message_delta(self, doc: dict) -> list[Event]:
        out = self._usage_report(doc.get("usage"))
        reason = (doc.get("delta") or {}).get("stop_reason")
        if reason and not self.finished:
            self.finished = True
            out.append(Finish(FINISH_FROM_WIRE.get(reason, FinishReason.STOP)))
        return out

    def _message_stop(self, doc: dict) -> list[Event]:
        self.ended = True
        if self.finished:
            return []
        self.finished = True
        return [Finish(FinishReason.STOP)]

    def _error(self, doc: dict) -> list[Event]:
        return [ErrorEvent(error_from_wire(doc))]


def _index(doc: dict) -> int:
    index = doc.get("index")
    return index if isinstance(index, int) else -1


_DECODERS: dict[str, Callable[[StreamDecoder, dict], list]] = {
    "message_start": StreamDecoder._message_start,
    "content_block_start": StreamDecoder._block_start,
    "content_block_delta": StreamDecoder._block_delta,
    "content_block_stop": StreamDecoder._block_stop,
    "message_delta": StreamDecoder._message_delta,
    "message_stop": StreamDecoder._message_stop,
    "error": StreamDecoder._error,
}


# ---------------------------------------------------------------- encoder


def _event(name: str, doc: dict) -> bytes:
    return encode_event(json_codec.dumps(doc), name)


class StreamEncoder:
    """Unified events -> Anthropic SSE bytes for an Anthropic client of another upstream.

    ``message_start`` goes out at the end of the batch that started the stream, so it
    carries whatever usage that batch reported. One block is open at a time; a new
    kind of content closes it. The stop reason and usage are held until ``close``,
    which writes ``message_delta`` and ``message_stop``: upstreams such as Chat
    Completions report usage after their finish. After ``error`` nothing more is
    written (Anthropic's own streams end at an ``error`` event).
    """

    content_type = "text/event-stream"

    def __init__(self, req: UnifiedRequest, model: str) -> None:
        self.model = model
        self.id = message_id("")
        self.usage: Usage | None = None
        self.finish: FinishReason | None = None
        self._pending_start = False
        self._started = False
        self._open: tuple | None = None  # (kind, key) of the open block
        self._open_index = -1
        self._next_index = 0
        self._tool_blocks: dict[int, int] = {}
        self._done = False

    def encode(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            handler = _ENCODERS.get(type(ev))
            if handler is not None and not self._done:
                handler(self, ev, out)
        if self._pending_start and not self._started and not self._done:
            self._start(out)
        return b"".join(out)

    def resume(self, response_id: str, next_sequence: int) -> None:
        """Anthropic events carry no sequence: nothing to continue."""

    def error(self, err: GatewayError) -> bytes:
        self._done = True
        return _event("error", format_error(err))

    def close(self) -> bytes:
        if self._done:
            return b""
        self._done = True
        out: list[bytes] = []
        self._start(out)
        self._close_block(out)
        out.append(_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(self.finish or FinishReason.STOP), "stop_sequence": None},
            "usage": usage_to_wire(self.usage),
        }))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    # ------------------------------------------------------------ blocks

    def _start(self, out: list) -> None:
        if self._started:
            return
        self._started = True
        out.append(_event("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage_to_wire(self.usage)}}))

    def _close_block(self, out: list) -> None:
        if self._open is not None:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._open_index}))
            self._open = None

    def _new_block(self, out: list, key: tuple, block: dict) -> int:
        self._start(out)
        self._close_block(out)
        index = self._next_index
        self._next_index += 1
        out.append(_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        self._open, self._open_index = key, index
        return index

    def _block(self, out: list, key: tuple, block: dict) -> int:
        if self._open == key:
            return self._open_index
        return self._new_block(out, key, block)

    def _delta(self, out: list, index: int, delta: dict) -> None:
        out.append(_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))

    # ------------------------------------------------------------ events

    def _stream_start(self, ev: StreamStart, out: list) -> None:
        self.id = message_id(ev.id)
        self._pending_start = True

    def _text(self, ev: TextDelta, out: list) -> None:
        if ev.text:
            index = self._block(out, ("text",), {"type": "text", "text": ""})
            self._delta(out, index, {"type": "text_delta", "text": ev.text})

    def _reasoning(self, ev: ReasoningDelta, out: list) -> None:
        """Another vendor's reasoning is shown as thinking with an empty signature: its
        own signature or blob would come back and be refused by Anthropic."""
        redacted = ev.redacted_for(NAME)
        if redacted is not None:
            self._new_block(out, ("redacted",), {"type": "redacted_thinking", "data": redacted})
            self._close_block(out)
        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        if ev.text:
            index = self._block(out, ("thinking",), thinking)
            self._delta(out, index, {"type": "thinking_delta", "thinking": ev.text})
        signature = ev.signature_for(NAME)
        if signature:
            index = self._block(out, ("thinking",), thinking)
            self._delta(out, index, {"type": "signature_delta", "signature": signature})

    def _tool_start(self, ev: ToolCallStart, out: list) -> None:
        self._tool_blocks[ev.index] = self._new_block(
            out, ("tool", ev.index), {"type": "tool_use", "id": ev.id, "name": ev.name, "input": {}})

    def _tool_delta(self, ev: ToolCallDelta, out: list) -> None:
        if ev.index not in self._tool_blocks:
            self._tool_start(ToolCallStart(ev.index, f"toolu_{ev.index}", ""), out)
        if ev.arguments:
            self._delta(out, self._tool_blocks[ev.index], {"type": "input_json_delta", "partial_json": ev.arguments})

    def _usage(self, ev: UsageReport, out: list) -> None:
        self.usage = ev.usage

    def _finish(self, ev: Finish, out: list) -> None:
        if self.finish is None:
            self.finish = ev.reason

    def _failed(self, ev: ErrorEvent, out: list) -> None:
        out.append(self.error(ev.error))


_ENCODERS: dict[type, Callable[[StreamEncoder, Any, list], None]] = {
    StreamStart: StreamEncoder._stream_start,
    TextDelta: StreamEncoder._text,
    ReasoningDelta: StreamEncoder._reasoning,
    ToolCallStart: StreamEncoder._tool_start,
    ToolCallDelta: StreamEncoder._tool_delta,
    UsageReport: StreamEncoder._usage,
    Finish: StreamEncoder._finish,
    ErrorEvent: StreamEncoder._failed,
}
