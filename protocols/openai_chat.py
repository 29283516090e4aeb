"""OpenAI Chat Completions: request/response translation and stream codecs.

Lossy conversions, where they happen: reasoning signatures and redacted reasoning have
no place in Chat Completions and are dropped on the way out (reasoning text travels as
``reasoning_content``, the field DeepSeek and vLLM use); image parts by URL or data URL
survive; tool results that hold images are flattened to their text.
"""

from __future__ import annotations

import json
import time
from typing import Any

from protocols.errors import GatewayError, InvalidRequest, UpstreamError
from protocols.sse import SSEEvent, encode_event
from protocols.unified import (
    ErrorEvent,
    Event,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ReasoningPart,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
    Usage,
    UsageReport,
)
from protocols.usage import normalize
from protocols.validate import check, require

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


# ---------------------------------------------------------------- requests


def parse_request(doc: dict) -> UnifiedRequest:
    model = require(doc, "model", str)
    raw_messages = require(doc, "messages", list)
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    system: list = []
    messages: list = []
    for i, m in enumerate(raw_messages):
        path = f"messages[{i}]."
        if not isinstance(m, dict):
            raise InvalidRequest(f"Invalid type for 'messages[{i}]': expected an object.", param=f"messages[{i}]")
        role = require(m, "role", str, path)
        if role in ("system", "developer"):
            system.extend(_content_parts(m.get("content"), path))
        elif role == "tool":
            call_id = require(m, "tool_call_id", str, path)
            messages.append(Message("tool", (ToolResultPart(call_id, _text_of(m.get("content"))),)))
        elif role in ("user", "assistant"):
            parts = []
            reasoning = m.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                parts.append(ReasoningPart(text=reasoning))
            parts.extend(_content_parts(m.get("content"), path))
            for j, call in enumerate(check(m, "tool_calls", list, path, [])):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise InvalidRequest(f"'{path}tool_calls[{j}].function' must be an object.")
                parts.append(ToolCallPart(str(call.get("id", "")), str(fn.get("name", "")), fn.get("arguments") or "{}"))
            messages.append(Message(role, tuple(parts)))
        else:
            raise InvalidRequest(f"Invalid value for '{path}role': {role!r}.", param=f"{path}role")
    stream = check(doc, "stream", bool, default=False)
    stream_options = check(doc, "stream_options", dict, default={})
    max_tokens = check(doc, "max_completion_tokens", int) or check(doc, "max_tokens", int)
    tools = []
    for i, t in enumerate(check(doc, "tools", list, default=[])):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"'tools[{i}].function.name' is required.", param=f"tools[{i}].function")
        tools.append(Tool(fn["name"], fn.get("description") or "", fn.get("parameters") or {}))
    stop = doc.get("stop")
    return UnifiedRequest(
        protocol=NAME,
        model=model,
        messages=tuple(messages),
        stream=stream,
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=_tool_choice_in(doc.get("tool_choice")),
        max_tokens=max_tokens,
        temperature=check(doc, "temperature", (int, float)),
        top_p=check(doc, "top_p", (int, float)),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        include_usage=bool(stream_options.get("include_usage")),
        raw=doc,
    )


def _content_parts(content: Any, path: str) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{path}content': expected a string or an array.", param=f"{path}content")
    parts: list = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(str(part.get("text", ""))))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            parts.append(_image_from_url(url))
        elif kind == "refusal":
            parts.append(TextPart(str(part.get("refusal", ""))))
    return parts


def _image_from_url(url: str) -> ImagePart:
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return ImagePart(data=data, media_type=head)
    return ImagePart(url=url)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _tool_choice_in(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"name": (choice.get("function") or {}).get("name")}
    return choice


def _tool_choice_out(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def build_request(req: UnifiedRequest, model: str, *, include_usage: bool) -> dict:
    """The upstream body. A Chat client's own body is reused, with only the model
    replaced and ``stream_options.include_usage`` added when asked."""
    if req.protocol == NAME:
        body = dict(req.raw)
        body["model"] = model
    else:
        body = _from_unified(req, model)
    if req.stream and include_usage:
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
    elif not req.stream:
        body.pop("stream_options", None)
    return body


def _from_unified(req: UnifiedRequest, model: str) -> dict:
    messages: list = []
    if req.system:
        messages.append({"role": "system", "content": "".join(p.text for p in req.system if isinstance(p, TextPart))})
    for m in req.messages:
        messages.extend(_message_out(m))
    body: dict = {"model": model, "messages": messages, "stream": req.stream}
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters or {"type": "object", "properties": {}}}}
            for t in req.tools
        ]
    if req.tool_choice is not None and req.tools:
        body["tool_choice"] = _tool_choice_out(req.tool_choice)
    for key, value in (("max_tokens", req.max_tokens), ("temperature", req.temperature), ("top_p", req.top_p)):
        if value is not None:
            body[key] = value
    if req.stop:
        body["stop"] = list(req.stop)
    return body


def _message_out(m: Message) -> list:
    results = [p for p in m.parts if isinstance(p, ToolResultPart)]
    out: list = [{"role": "tool", "tool_call_id": p.call_id, "content": _result_text(p)} for p in results]
    rest = [p for p in m.parts if not isinstance(p, ToolResultPart)]
    if not rest:
        return out
    # A system turn inside the conversation (Claude Code sends them) stays a system turn.
    role = m.role if m.role in ("assistant", "system") else "user"
    calls = [p for p in rest if isinstance(p, ToolCallPart)]
    content = [_part_out(p) for p in rest if isinstance(p, (TextPart, ImagePart))]
    msg: dict = {"role": role}
    if all(c["type"] == "text" for c in content):
        msg["content"] = "".join(c["text"] for c in content) if content or not calls else None
    else:
        msg["content"] = content
    reasoning = "".join(p.text for p in rest if isinstance(p, ReasoningPart))
    if reasoning and role == "assistant":
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    out.append(msg)
    return out


def _result_text(p: ToolResultPart) -> str:
    if isinstance(p.content, str):
        return p.content
    return "".join(x.text for x in p.content if isinstance(x, TextPart))


def _part_out(p: TextPart | ImagePart) -> dict:
    if isinstance(p, TextPart):
        return {"type": "text", "text": p.text}
    url = p.url or f"data:{p.media_type};base64,{p.data}"
    return {"type": "image_url", "image_url": {"url": url}}


# ---------------------------------------------------------------- responses


def parse_response(doc: dict) -> UnifiedResponse:
    choice = (doc.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    parts: list = []
    if msg.get("reasoning_content"):
        parts.append(ReasoningPart(text=msg["reasoning_content"]))
    if msg.get("content"):
        parts.append(TextPart(msg["content"]))
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") or {}
        parts.append(ToolCallPart(call.get("id", ""), fn.get("name", ""), fn.get("arguments") or "{}"))
    return UnifiedResponse(
        id=doc.get("id", ""),
        model=doc.get("model", ""),
        parts=tuple(parts),
        finish=FINISH_FROM_WIRE.get(choice.get("finish_reason") or "stop", FinishReason.STOP),
        usage=normalize(NAME, doc.get("usage")),
    )


def usage_to_wire(u: Usage) -> dict:
    prompt = u.input + u.cached_input + u.cache_write
    completion = u.output + u.reasoning
    wire = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": u.cached_input},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    }
    if u.cache_write:
        wire["prompt_tokens_details"]["cache_write_tokens"] = u.cache_write
    return wire


def format_response(resp: UnifiedResponse, model: str) -> dict:
    text = "".join(p.text for p in resp.parts if isinstance(p, TextPart))
    calls = [p for p in resp.parts if isinstance(p, ToolCallPart)]
    reasoning = "".join(p.text for p in resp.parts if isinstance(p, ReasoningPart))
    message: dict = {"role": "assistant", "content": text if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
        ]
    doc = {
        "id": _chat_id(resp.id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": FINISH_TO_WIRE[resp.finish], "logprobs": None}],
    }
    if resp.usage is not None:
        doc["usage"] = usage_to_wire(resp.usage)
    return doc


def _chat_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl-") else f"chatcmpl-{upstream_id or 'tollhouse'}"


def format_error(err: GatewayError) -> dict:
    code = {401: "invalid_api_key", 402: "insufficient_quota", 429: "rate_limit_exceeded"}.get(err.status)
    if err.status == 404 and err.param == "model":
        code = "model_not_found"
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": code}}


# ---------------------------------------------------------------- streams


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

    def __init__(self, *, light: bool = False) -> None:
        self.light = light
        self.started = False
        self.finished = False
        self.usage_only = False
        self._tool_ids: dict[int, str] = {}

    def feed(self, ev: SSEEvent) -> list[Event]:
        self.usage_only = False
        data = ev.data
        if data is None:
            return []
        if data == b"[DONE]":
            if not self.finished:
                self.finished = True
                return [Finish(FinishReason.STOP)]
            return []
        if self.light and self.started and not _cheap_needs_parse(data):
            return []
        try:
            doc = json.loads(data)
        except ValueError:
            return [ErrorEvent(UpstreamError("upstream sent a malformed stream chunk"))]
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
        if content:
            out.append(TextDelta(content))
        for call in delta.get("tool_calls") or []:
            index = call.get("index", 0)
            fn = call.get("function") or {}
            if index not in self._tool_ids:
                self._tool_ids[index] = call.get("id") or f"call_{index}"
                out.append(ToolCallStart(index, self._tool_ids[index], fn.get("name") or ""))
            if fn.get("arguments"):
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

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        doc = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return encode_event(json.dumps(doc, separators=(",", ":")))

    def encode(self, events: list[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if isinstance(ev, TextDelta):
                out.append(self._chunk({"content": ev.text}))
            elif isinstance(ev, StreamStart):
                self.id = _chat_id(ev.id)
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

    def error(self, err: GatewayError) -> bytes:
        return encode_event(json.dumps(format_error(err)))

    def close(self) -> bytes:
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
