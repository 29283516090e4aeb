"""OpenAI Chat Completions: request/response translation and stream codecs.

Lossy conversions, where they happen: reasoning signatures and redacted reasoning have
no place in Chat Completions and are dropped on the way out (reasoning text travels as
``reasoning_content``, the field DeepSeek and vLLM use); image parts by URL or data URL
survive; tool results that hold images are flattened to their text.

System and developer messages before the first turn are the system prompt; later ones
stay where they are (a ``system`` message there, for any upstream with a positional
equivalent). ``response_format`` and ``reasoning_effort`` are read into the unified
request and written from it (``protocols.structured_output``, ``protocols.reasoning``).
"""

from __future__ import annotations

import time
from typing import Any

from protocols.errors import InvalidRequest
from protocols.openai_chat_stream import StreamDecoder, StreamEncoder
from protocols.openai_chat_wire import (
    FINISH_FROM_WIRE,
    FINISH_TO_WIRE,
    NAME,
    chat_id,
    format_error,
    usage_to_wire,
)
from protocols.unified import (
    FinishReason,
    ImagePart,
    Message,
    OutputFormat,
    OutputKind,
    Reasoning,
    ReasoningPart,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
)
from protocols.reasoning import effort_named, effort_of
from protocols.server_tools import wire_tools
from protocols.usage import normalize
from protocols.validate import check, model_name, object_at, one_of, require, strings, token_limit

__all__ = ["NAME", "StreamDecoder", "StreamEncoder", "build_request", "format_error", "format_response",
           "parse_request", "parse_response", "usage_to_wire"]


# ---------------------------------------------------------------- requests


def parse_request(doc: dict) -> UnifiedRequest:
    model = model_name(doc)
    raw_messages = require(doc, "messages", list)
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    system: list = []
    messages: list = []
    for i, m in enumerate(raw_messages):
        path = f"messages[{i}]."
        object_at(m, f"messages[{i}]")
        role = require(m, "role", str, path)
        if role in ("system", "developer"):
            parts = _content_parts(m.get("content"), path)
            if messages:  # after the conversation began: it stays at its place
                messages.append(Message("system", tuple(parts), {"role": role}))
            else:
                system.extend(parts)
        elif role == "tool":
            call_id = require(m, "tool_call_id", str, path)
            messages.append(Message("tool", (ToolResultPart(call_id, _text_of(m.get("content"), path)),)))
        elif role in ("user", "assistant"):
            parts = []
            reasoning = check(m, "reasoning_content", str, path)
            if reasoning:
                parts.append(ReasoningPart(text=reasoning))
            parts.extend(_content_parts(m.get("content"), path))
            for j, call in enumerate(check(m, "tool_calls", list, path, [])):
                where = f"{path}tool_calls[{j}]."
                fn = require(object_at(call, where[:-1]), "function", dict, where)
                parts.append(ToolCallPart(check(call, "id", str, where, ""), check(fn, "name", str, f"{where}function.", ""),
                                          check(fn, "arguments", str, f"{where}function.") or "{}"))
            messages.append(Message(role, tuple(parts)))
        else:
            raise InvalidRequest(f"Invalid value for '{path}role': {role!r}.", param=f"{path}role")
    stream = check(doc, "stream", bool, default=False)
    stream_options = check(doc, "stream_options", dict, default={})
    # ``max_completion_tokens`` replaced ``max_tokens``; a client may send both, and the
    # newer one is the one OpenAI obeys.
    legacy_max = token_limit(doc, "max_tokens")
    max_tokens = token_limit(doc, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = legacy_max
    tools = []
    for i, t in enumerate(check(doc, "tools", list, default=[])):
        fn = require(object_at(t, f"tools[{i}]"), "function", dict, f"tools[{i}].")
        where = f"tools[{i}].function."
        tools.append(Tool(require(fn, "name", str, where), check(fn, "description", str, where, ""),
                          check(fn, "parameters", dict, where, {})))
    return UnifiedRequest(
        protocol=NAME,
        model=model,
        messages=tuple(messages),
        stream=stream,
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=_tool_choice_in(doc),
        max_tokens=max_tokens,
        temperature=check(doc, "temperature", (int, float)),
        top_p=check(doc, "top_p", (int, float)),
        stop=strings(doc, "stop", single=True),
        include_usage=bool(check(stream_options, "include_usage", bool, "stream_options.")),
        output_format=_response_format_in(check(doc, "response_format", dict)),
        reasoning=_reasoning_in(doc),
        raw=doc,
    )


def _response_format_in(fmt: dict | None) -> OutputFormat | None:
    if fmt is None:
        return None
    kind = require(fmt, "type", str, "response_format.")
    if kind == "json_object":
        return OutputFormat(OutputKind.JSON_OBJECT)
    if kind == "json_schema":
        spec = require(fmt, "json_schema", dict, "response_format.")
        where = "response_format.json_schema."
        return OutputFormat(OutputKind.JSON_SCHEMA, check(spec, "schema", dict, where, {}),
                            check(spec, "name", str, where, "response"), check(spec, "strict", bool, where))
    if kind == "text":
        return None
    raise InvalidRequest(f"Invalid value for 'response_format.type': {kind!r}.", param="response_format.type")


def _response_format_out(fmt: OutputFormat) -> dict:
    if fmt.kind is OutputKind.JSON_OBJECT:
        return {"type": "json_object"}
    spec: dict = {"name": fmt.name, "schema": dict(fmt.schema)}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _reasoning_in(doc: dict) -> Reasoning | None:
    effort = check(doc, "reasoning_effort", str)
    if effort is None:
        return None
    known = effort_named(effort)
    if known is None:
        raise InvalidRequest(f"Invalid value for 'reasoning_effort': {effort!r}.", param="reasoning_effort")
    return Reasoning(effort=known)


def _content_parts(content: Any, path: str) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{path}content': expected a string or an array.", param=f"{path}content")
    parts: list = []
    for j, part in enumerate(content):
        where = f"{path}content[{j}]."
        kind = require(object_at(part, where[:-1]), "type", str, where)
        if kind == "text":
            parts.append(TextPart(require(part, "text", str, where)))
        elif kind == "image_url":
            image = require(part, "image_url", dict, where)
            parts.append(_image_from_url(require(image, "url", str, f"{where}image_url.")))
        elif kind == "refusal":
            parts.append(TextPart(require(part, "refusal", str, where)))
    return parts


def _image_from_url(url: str) -> ImagePart:
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return ImagePart(data=data, media_type=head)
    return ImagePart(url=url)


def _text_of(content: Any, path: str) -> str:
    """A tool message's content: a string, or text parts joined."""
    return "".join(p.text for p in _content_parts(content, path) if isinstance(p, TextPart))


TOOL_CHOICES = ("none", "auto", "required")


def _tool_choice_in(doc: dict) -> Any:
    """``"none"``/``"auto"``/``"required"``, or ``{"name": ...}`` for a named function."""
    choice = check(doc, "tool_choice", (str, dict))
    if isinstance(choice, dict):
        fn = require(choice, "function", dict, "tool_choice.")
        return {"name": require(fn, "name", str, "tool_choice.function.")}
    return one_of(doc, "tool_choice", TOOL_CHOICES)


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
    if req.prompt_cache_key:
        body.setdefault("prompt_cache_key", req.prompt_cache_key)
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
    wire_tools(req.server_tools, NAME)  # Chat runs no server tools: any left is refused by name
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
    if req.output_format is not None:
        body["response_format"] = _response_format_out(req.output_format)
    effort = effort_of(req.reasoning)
    if effort is not None:
        body["reasoning_effort"] = effort.value
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


def format_response(resp: UnifiedResponse, model: str, **_: Any) -> dict:
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
        "id": chat_id(resp.id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": FINISH_TO_WIRE[resp.finish], "logprobs": None}],
    }
    if resp.usage is not None:
        doc["usage"] = usage_to_wire(resp.usage)
    return doc
