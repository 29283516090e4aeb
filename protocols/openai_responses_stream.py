"""Responses API streams: upstream events -> unified events, and back.

The decoder reads the typed event stream (``response.created`` ...
``response.completed``). In pass-through (``light=True``) the client gets the
upstream bytes as sent, so only the events that carry the start, the usage, the
finish or an error are JSON-decoded; the rest (text deltas, and frames of hundreds of
KB holding reasoning blobs) are recognised by their ``event:`` name, or by the
``"type"`` that opens their data, and skipped unread.

The encoder writes the sequence the openai SDK and Codex expect, every event with a
``sequence_number``: created, in_progress, then per output item ``output_item.added``
... ``output_item.done`` (messages with one ``output_text`` part, reasoning with one
summary part, function calls with argument deltas), and ``response.completed`` (or
``response.incomplete``) carrying the whole response and its usage. Lossy: tool calls
that interleave their argument deltas stay open side by side and close in output
order; reasoning signatures (Anthropic, Gemini) have no Responses field and are
dropped, and so is another provider's redacted reasoning (only a Responses upstream's
own ``encrypted_content`` is shown to a Responses client: the issuer rule of
``ReasoningPart``).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

import attrs

from protocols import json_codec
from protocols.errors import GatewayError, UpstreamProtocolError
from protocols.openai_responses_wire import (
    NAME,
    TOOL_CALL_ITEMS,
    error_code,
    error_from_wire,
    finish_from_response,
    function_call_item,
    message_item,
    new_id,
    reasoning_item,
    response_id,
    response_object,
    status_for,
)
from protocols.sse import SSEEvent, encode_event
from protocols.tool_names import NamespacedNames, flat_name
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

LIGHT_EVENTS = frozenset({"response.created", "response.completed", "response.incomplete", "response.failed", "error"})
_TYPE_PREFIX = b'{"type":"'


def _peek_type(data: bytes) -> str | None:
    """The event type when the data opens with it (OpenAI's own key order)."""
    if not data.startswith(_TYPE_PREFIX):
        return None
    end = data.find(b'"', len(_TYPE_PREFIX))
    return data[len(_TYPE_PREFIX):end].decode("utf-8", "replace") if end > 0 else None


_SEQ = b'"sequence_number":'


def _peek_sequence(data: bytes) -> int | None:
    """An event's ``sequence_number`` without decoding it (one search, a few digits)."""
    at = data.find(_SEQ)
    if at < 0:
        return None
    at += len(_SEQ)
    while data[at:at + 1] == b" ":
        at += 1
    end = at
    while data[end:end + 1].isdigit():
        end += 1
    return int(data[at:end]) if end > at else None


class StreamDecoder:
    """Responses events -> unified events; usage arrives once, in the terminal event."""

    ENDS_AT_EOF_AFTER_FINISH = False  # completed / incomplete / failed end a stream

    def __init__(self, *, light: bool = False) -> None:
        self.light = light
        self.started = False
        self.finished = False
        self.failed = False
        self.ended = False  # a terminal event arrived
        self.last_sequence = -1  # the upstream's latest sequence_number, so a gateway-made event can follow it
        self.response: dict | None = None  # the response object of the closing event, as the upstream sent it
        self._calls: set[int] = set()
        self._handlers: dict[str, Callable[[dict], list]] = {
            "response.created": self._start_event,
            "response.in_progress": self._start_event,
            "response.output_item.added": self._item_added,
            "response.output_item.done": self._item_done,
            "response.function_call_arguments.delta": self._arguments_delta,
            "response.custom_tool_call_input.delta": self._arguments_delta,
            "response.output_text.delta": self._text_delta,
            "response.refusal.delta": self._text_delta,
            "response.reasoning_summary_text.delta": self._reasoning_delta,
            "response.reasoning_text.delta": self._reasoning_delta,
            "response.reasoning_summary_part.added": self._summary_part,
            "response.completed": self._terminal,
            "response.incomplete": self._terminal,
            "response.failed": self._failed,
            "error": self._error,
        }

    def feed(self, ev: SSEEvent) -> list[Event]:
        data = ev.data
        if data is None:
            return []
        seq = _peek_sequence(data)
        if seq is not None:
            self.last_sequence = seq
        if data == b"[DONE]":
            self.ended = True
            if self.finished or self.failed:
                return []
            self.finished = True
            return [Finish(FinishReason.STOP)]
        name = ev.event if ev.event and ev.event != "message" else _peek_type(data)
        if name is not None and (name not in self._handlers or (self.light and name not in LIGHT_EVENTS)):
            return []
        try:
            doc = json.loads(data)
        except ValueError:
            return [ErrorEvent(UpstreamProtocolError("upstream sent a malformed Responses stream event"), from_upstream=False)]
        if not isinstance(doc, dict):
            return []
        handler = self._handlers.get(name or str(doc.get("type")))
        if handler is None or (self.light and (name or doc.get("type")) not in LIGHT_EVENTS):
            return []
        return handler(doc)

    # ------------------------------------------------------------ handlers

    def _start(self, response: Any) -> list:
        if self.started:
            return []
        self.started = True
        response = response if isinstance(response, dict) else {}
        return [StreamStart(str(response.get("id", "")), str(response.get("model", "")))]

    def _start_event(self, doc: dict) -> list:
        return self._start(doc.get("response"))

    def _item_added(self, doc: dict) -> list:
        item = doc.get("item")
        if not isinstance(item, dict) or item.get("type") not in TOOL_CALL_ITEMS:
            return []
        index = doc.get("output_index")
        index = index if isinstance(index, int) else len(self._calls)
        self._calls.add(index)
        extra = {"id": item.get("id")}
        if item.get("type") != "function_call":
            extra["type"] = item.get("type")
        name = flat_name(item.get("namespace") if isinstance(item.get("namespace"), str) else None,
                         str(item.get("name", "")))
        out: list = [ToolCallStart(index, str(item.get("call_id", "")), name, extra)]
        arguments = item.get("arguments") or item.get("input")
        if isinstance(arguments, str) and arguments:
            out.append(ToolCallDelta(index, arguments))
        return out

    def _item_done(self, doc: dict) -> list:
        item = doc.get("item")
        if isinstance(item, dict) and item.get("type") == "reasoning":
            blob = item.get("encrypted_content")
            if isinstance(blob, str) and blob:
                item_id = item.get("id")
                return [ReasoningDelta(redacted=blob, issuer=NAME, item_id=item_id if isinstance(item_id, str) else None)]
        return []

    def _arguments_delta(self, doc: dict) -> list:
        delta = doc.get("delta")
        index = doc.get("output_index")
        if not isinstance(delta, str) or not delta:
            return []
        return [ToolCallDelta(index if isinstance(index, int) else 0, delta)]

    def _text_delta(self, doc: dict) -> list:
        delta = doc.get("delta")
        return [TextDelta(delta)] if isinstance(delta, str) and delta else []

    def _reasoning_delta(self, doc: dict) -> list:
        delta = doc.get("delta")
        return [ReasoningDelta(text=delta)] if isinstance(delta, str) and delta else []

    def _summary_part(self, doc: dict) -> list:
        """Summary parts are paragraphs; keep them apart in the unified text."""
        index = doc.get("summary_index")
        return [ReasoningDelta(text="\n\n")] if isinstance(index, int) and index > 0 else []

    def _closing(self, doc: dict) -> tuple[dict, list]:
        """The response object a closing event carries, and its start and usage events."""
        response = doc.get("response")
        response = response if isinstance(response, dict) else {}
        self.response = response
        out = self._start(response)
        usage = normalize(NAME, response.get("usage"))
        if usage is not None:
            out.append(UsageReport(usage))
        return response, out

    def _terminal(self, doc: dict) -> list:
        self.ended = True
        response, out = self._closing(doc)
        if not self.finished:
            self.finished = True
            out.append(Finish(finish_from_response(response, bool(self._calls))))
        return out

    def _failed(self, doc: dict) -> list:
        self.ended = True
        response, out = self._closing(doc)
        if not self.failed:
            self.failed = True
            out.append(ErrorEvent(error_from_wire(response.get("error"), "The upstream response failed.")))
        return out

    def _error(self, doc: dict) -> list:
        if self.failed:
            return []
        self.failed = True
        err = doc.get("error") if isinstance(doc.get("error"), dict) else doc
        return [ErrorEvent(error_from_wire(err, "The upstream stream reported an error."))]


# ---------------------------------------------------------------- encoder


@attrs.define
class _OpenItem:
    """A message or reasoning item whose deltas are still arriving."""

    kind: str
    id: str
    index: int
    pieces: list = attrs.field(factory=list)
    part_open: bool = False
    encrypted: str | None = None


@attrs.define
class _OpenCall:
    id: str
    call_id: str
    name: str
    index: int
    pieces: list = attrs.field(factory=list)


class StreamEncoder:
    """Unified events -> Responses SSE for a Responses client of another upstream.

    Finish and usage are held and go out together in ``close()`` as
    ``response.completed``; ``error()`` ends the stream with an ``error`` event and
    ``response.failed`` instead (without a second ``response.created`` when the
    upstream's own start was forwarded).
    """

    content_type = "text/event-stream"

    def __init__(self, req: UnifiedRequest, model: str) -> None:
        self.model = model
        self.names = NamespacedNames.of(req)
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.seq = 0
        self.started = False
        self.ended = False
        self.usage: Usage | None = None
        self.finish: FinishReason | None = None
        self.output: list = []
        self.response: dict | None = None  # the response object of the closing event, once sent
        self._item: _OpenItem | None = None
        self._calls: dict[int, _OpenCall] = {}

    def _emit(self, out: list, kind: str, **fields: Any) -> None:
        doc = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        out.append(encode_event(json_codec.dumps(doc), event=kind))

    def _response(self, status: str, **kw: Any) -> dict:
        return response_object(self.id, self.model, self.created_at, status=status,
                               output=[item for item in self.output if item is not None], **kw)

    def _start(self, out: list) -> None:
        if self.started:
            return
        self.started = True
        shell = self._response("in_progress", usage=None)
        self._emit(out, "response.created", response=shell)
        self._emit(out, "response.in_progress", response=shell)

    def encode(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        call: _OpenCall | None
        for ev in events:
            if self.ended:
                break
            if isinstance(ev, StreamStart):
                if not self.started:
                    self.id = response_id(ev.id)
                self._start(out)
            elif isinstance(ev, TextDelta):
                self._start(out)
                item = self._open(out, "message")
                item.pieces.append(ev.text)
                self._emit(out, "response.output_text.delta", item_id=item.id, output_index=item.index,
                           content_index=0, delta=ev.text, logprobs=[])
            elif isinstance(ev, ReasoningDelta):
                self._start(out)
                self._reasoning(out, ev)
            elif isinstance(ev, ToolCallStart):
                self._start(out)
                self._close_item(out)
                call = _OpenCall(new_id("fc"), ev.id, ev.name, len(self.output))
                self.output.append(None)
                self._calls[ev.index] = call
                self._emit(out, "response.output_item.added", output_index=call.index,
                           item=function_call_item(call.id, call.call_id, call.name, "", "in_progress", self.names))
            elif isinstance(ev, ToolCallDelta):
                call = self._calls.get(ev.index)
                if call is not None and ev.arguments:
                    call.pieces.append(ev.arguments)
                    self._emit(out, "response.function_call_arguments.delta", item_id=call.id,
                               output_index=call.index, delta=ev.arguments)
            elif isinstance(ev, UsageReport):
                self.usage = ev.usage
            elif isinstance(ev, Finish):
                self.finish = self.finish or ev.reason
            elif isinstance(ev, ErrorEvent):
                out.append(self.error(ev.error))
        return b"".join(out)

    def _reasoning(self, out: list, ev: ReasoningDelta) -> None:
        redacted = ev.redacted_for(NAME)  # another vendor's blob would be refused by OpenAI
        if not ev.text and not redacted:
            return
        item = self._open(out, "reasoning")
        if redacted:
            item.encrypted = redacted
        if ev.text:
            if not item.part_open:
                item.part_open = True
                self._emit(out, "response.reasoning_summary_part.added", item_id=item.id, output_index=item.index,
                           summary_index=0, part={"type": "summary_text", "text": ""})
            item.pieces.append(ev.text)
            self._emit(out, "response.reasoning_summary_text.delta", item_id=item.id, output_index=item.index,
                       summary_index=0, delta=ev.text)

    def _open(self, out: list, kind: str) -> _OpenItem:
        if self._item is not None and self._item.kind == kind:
            return self._item
        self._close_item(out)
        self._close_calls(out)
        item = _OpenItem(kind, new_id("msg" if kind == "message" else "rs"), len(self.output))
        self.output.append(None)
        self._item = item
        if kind == "message":
            self._emit(out, "response.output_item.added", output_index=item.index,
                       item={"id": item.id, "type": "message", "status": "in_progress", "content": [],
                             "role": "assistant"})
            self._emit(out, "response.content_part.added", item_id=item.id, output_index=item.index,
                       content_index=0, part={"type": "output_text", "annotations": [], "logprobs": [], "text": ""})
        else:
            self._emit(out, "response.output_item.added", output_index=item.index,
                       item={"id": item.id, "type": "reasoning", "summary": []})
        return item

    def _close_item(self, out: list) -> None:
        item, self._item = self._item, None
        if item is None:
            return
        text = "".join(item.pieces)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            done = message_item(item.id, text)
            self._emit(out, "response.output_text.done", **where, content_index=0, text=text, logprobs=[])
            self._emit(out, "response.content_part.done", **where, content_index=0, part=done["content"][0])
        else:
            done = reasoning_item(item.id, text, item.encrypted)
            if item.part_open:
                self._emit(out, "response.reasoning_summary_text.done", **where, summary_index=0, text=text)
                self._emit(out, "response.reasoning_summary_part.done", **where, summary_index=0,
                           part={"type": "summary_text", "text": text})
        self.output[item.index] = done
        self._emit(out, "response.output_item.done", output_index=item.index, item=done)

    def _close_calls(self, out: list) -> None:
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            arguments = "".join(call.pieces)
            done = function_call_item(call.id, call.call_id, call.name, arguments, names=self.names)
            self._emit(out, "response.function_call_arguments.done", item_id=call.id, output_index=call.index,
                       name=done["name"], arguments=arguments)
            self.output[call.index] = done
            self._emit(out, "response.output_item.done", output_index=call.index, item=done)
        self._calls.clear()

    def resume(self, response_id: str, next_sequence: int) -> None:
        """Continue a stream whose events so far came from the upstream as they were
        (pass-through): a gateway-made closing event keeps the upstream's response id
        and follows its sequence numbers, as clients check both."""
        if response_id:
            self.id = response_id
        self.seq = max(self.seq, next_sequence)
        self.started = True

    def error(self, err: GatewayError) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out: list[bytes] = []
        code = error_code(err)
        # As OpenAI does: an ``error`` event (which the SDKs raise as an API error), then
        # the response's own ``response.failed``.
        self._emit(out, "error", error={"type": err.kind, "code": code, "message": err.message, "param": err.param})
        self.response = self._response("failed", usage=self.usage, error={"code": code, "message": err.message})
        self._emit(out, "response.failed", response=self.response)
        return b"".join(out)

    def close(self) -> bytes:
        if self.ended:
            return b""
        out: list[bytes] = []
        self._start(out)
        self._close_item(out)
        self._close_calls(out)
        self.ended = True
        status = status_for(self.finish)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        self.response = self._response(status, usage=self.usage, finish=self.finish)
        self._emit(out, kind, response=self.response)
        return b"".join(out)
