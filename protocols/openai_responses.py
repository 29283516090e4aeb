"""OpenAI Responses API: request/response translation (stream codecs in ``_stream``).

A Responses client talking to a Responses upstream gets its own body forwarded with
only the model replaced, so nothing below is lossy for it. Across protocols:

- ``instructions`` and the ``system``/``developer`` messages before the first turn
  become the unified system prompt; later ones stay at their place (a ``system``
  message in the unified list, a ``developer`` message when built for Responses).
- ``namespace`` tools are flattened into functions named ``<namespace>__<tool>``;
  calls to them come back to a Responses client as the namespace's own call
  (``request=`` of ``format_response``, the encoder's request when streamed).
- Hosted tools (``web_search``, ``code_interpreter``, ``file_search`` ...) become
  ``ServerTool``s (``protocols.server_tools``); the other non-function tools
  (``local_shell``, ``custom`` ...) ride in ``extra`` and reach only a Responses
  upstream; a ``tool_choice`` naming such a tool becomes ``auto`` elsewhere.
  ``include``, ``store``, ``prompt_cache_key`` and ``parallel_tool_calls`` likewise
  only reach a Responses upstream; ``text.format`` and ``reasoning.effort`` are
  translated (``OutputFormat``, ``Reasoning``).
- Reasoning items become ``ReasoningPart`` (summary text, ``encrypted_content`` as
  ``redacted``, the item id in ``extra``). Going back to a Responses upstream only
  reasoning that came from one (it has an ``rs_`` id) is replayed: another
  provider's reasoning blob means nothing to OpenAI. Signatures are dropped.
- Input items with no unified meaning (``item_reference``, ``web_search_call``,
  ``local_shell_call`` ...) and ``input_file`` parts are dropped; ``stop`` has no
  Responses field and is dropped.
- ``previous_response_id`` is resolved before parsing, by the gateway (its store, or a
  WebSocket connection's last response): what is parsed here is the whole conversation,
  and the field itself never reaches an upstream.
"""

from __future__ import annotations

import time
from typing import Any

from protocols.errors import GatewayError, InvalidRequest
from protocols.openai_responses_stream import StreamDecoder, StreamEncoder
from protocols.openai_responses_wire import (
    NAME,
    TOOL_CALL_ITEMS,
    finish_from_response,
    output_items,
    response_id,
    response_object,
    status_for,
)
from protocols.unified import (
    Effort,
    ImagePart,
    Message,
    OutputFormat,
    OutputKind,
    Part,
    Reasoning,
    ReasoningPart,
    ServerTool,
    ServerToolKind,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
)
from protocols.reasoning import effort_named, effort_of
from protocols.server_tools import wire_tools
from protocols.tool_names import NamespacedNames, flat_name
from protocols.usage import normalize
from protocols.validate import check, model_name, object_at, require, token_limit

__all__ = ["NAME", "parse_request", "build_request", "parse_response", "format_response", "format_error",
           "StreamDecoder", "StreamEncoder"]

# Top-level fields kept in ``extra`` and sent again only to a Responses upstream.
PASSTHROUGH_FIELDS = ("include", "store", "prompt_cache_key", "parallel_tool_calls")
ENCRYPTED_REASONING = "reasoning.encrypted_content"  # the ``include`` entry that asks for it
SERVER_TOOLS = {
    "web_search": ServerToolKind.WEB_SEARCH, "web_search_preview": ServerToolKind.WEB_SEARCH,
    "web_search_2025_08_26": ServerToolKind.WEB_SEARCH, "web_search_preview_2025_03_11": ServerToolKind.WEB_SEARCH,
    "code_interpreter": ServerToolKind.CODE_EXECUTION, "file_search": ServerToolKind.OTHER,
    "image_generation": ServerToolKind.OTHER, "computer_use_preview": ServerToolKind.OTHER,
    "mcp": ServerToolKind.OTHER,
}
ASSISTANT_ITEMS = frozenset({"reasoning", "function_call", "custom_tool_call"})
# OpenAI refuses a smaller ``max_output_tokens`` ("integer below minimum value").
RESPONSES_MIN_OUTPUT_TOKENS = 16


# ---------------------------------------------------------------- requests


def parse_request(doc: dict) -> UnifiedRequest:
    model = model_name(doc)
    system: list = []
    instructions = check(doc, "instructions", str)
    if instructions:
        system.append(TextPart(instructions))
    messages: list = []
    raw_input = doc.get("input")
    if isinstance(raw_input, str):
        messages.append(Message("user", (TextPart(raw_input),)))
    elif isinstance(raw_input, list):
        for i, item in enumerate(raw_input):
            _input_item(item, f"input[{i}]", system, messages)
    elif raw_input is not None:
        raise InvalidRequest("Invalid type for 'input': expected a string or an array.", param="input")
    else:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    tools, server_tools, other_tools = _tools_in(check(doc, "tools", list, default=[]))
    extra: dict = {key: doc[key] for key in PASSTHROUGH_FIELDS if key in doc}
    if other_tools:
        extra["tools"] = other_tools
    return UnifiedRequest(
        protocol=NAME,
        model=model,
        messages=tuple(messages),
        stream=check(doc, "stream", bool, default=False),
        system=tuple(system),
        tools=tuple(tools),
        tool_choice=_tool_choice_in(doc, {t.name for t in tools}),
        max_tokens=token_limit(doc, "max_output_tokens", minimum=RESPONSES_MIN_OUTPUT_TOKENS),
        temperature=check(doc, "temperature", (int, float)),
        top_p=check(doc, "top_p", (int, float)),
        output_format=_text_format_in(check(doc, "text", dict)),
        reasoning=_reasoning_in(check(doc, "reasoning", dict)),
        server_tools=tuple(server_tools),
        raw=doc,
        extra=extra,
    )


def _text_format_in(text: dict | None) -> OutputFormat | None:
    fmt = check(text, "format", dict, "text.") if text is not None else None
    if fmt is None:
        return None
    kind = require(fmt, "type", str, "text.format.")
    if kind == "json_object":
        return OutputFormat(OutputKind.JSON_OBJECT)
    if kind == "json_schema":
        where = "text.format."
        return OutputFormat(OutputKind.JSON_SCHEMA, require(fmt, "schema", dict, where),
                            check(fmt, "name", str, where, "response"), check(fmt, "strict", bool, where))
    return None


def _text_format_out(fmt: OutputFormat) -> dict:
    if fmt.kind is OutputKind.JSON_OBJECT:
        return {"format": {"type": "json_object"}}
    out: dict = {"type": "json_schema", "name": fmt.name, "schema": dict(fmt.schema)}
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return {"format": out}


def _reasoning_in(reasoning: dict | None) -> Reasoning | None:
    effort = check(reasoning, "effort", str, "reasoning.") if reasoning is not None else None
    if effort is None:
        return None
    known = effort_named(effort)
    if known is None:
        raise InvalidRequest(f"Invalid value for 'reasoning.effort': {effort!r}.", param="reasoning.effort")
    return Reasoning(effort=known)


def _input_item(item: Any, path: str, system: list, messages: list) -> None:
    object_at(item, path)
    kind = check(item, "type", str, f"{path}.") or ("message" if "role" in item else None)
    if kind == "message":
        role = require(item, "role", str, f"{path}.")
        parts = _content_in(item.get("content"), f"{path}.content")
        if role in ("system", "developer"):
            if messages:  # after the conversation began: it stays at its place
                messages.append(Message("system", tuple(parts), {"role": role}))
            else:
                system.extend(parts)
        elif role in ("user", "assistant"):
            _append(messages, role, parts, merge=role == "assistant")
        else:
            raise InvalidRequest(f"Invalid value for '{path}.role': {role!r}.", param=f"{path}.role")
    elif kind == "function_call":
        call_id = require(item, "call_id", str, f"{path}.")
        name = flat_name(check(item, "namespace", str, f"{path}."), require(item, "name", str, f"{path}."))
        part: Part = ToolCallPart(call_id, name, check(item, "arguments", str, f"{path}.") or "{}",
                            extra={"id": item["id"]} if isinstance(item.get("id"), str) else {})
        _append(messages, "assistant", [part], merge=True)
    elif kind == "custom_tool_call":
        part = ToolCallPart(require(item, "call_id", str, f"{path}."), check(item, "name", str, f"{path}.", ""),
                            check(item, "input", str, f"{path}.", ""), extra={"item": item})
        _append(messages, "assistant", [part], merge=True)
    elif kind in ("function_call_output", "custom_tool_call_output"):
        call_id = require(item, "call_id", str, f"{path}.")
        output = item.get("output")
        content = output if isinstance(output, str) else tuple(_content_in(output, f"{path}.output"))
        extra = {"item": item} if kind == "custom_tool_call_output" else {}
        _append(messages, "tool", [ToolResultPart(call_id, content, extra=extra)], merge=True)
    elif kind == "reasoning":
        summary = check(item, "summary", list, f"{path}.", [])
        text = "\n\n".join(require(object_at(s, f"{path}.summary[{j}]"), "text", str, f"{path}.summary[{j}].")
                           for j, s in enumerate(summary))
        part = ReasoningPart(text=text, redacted=check(item, "encrypted_content", str, f"{path}."),
                             extra={"id": check(item, "id", str, f"{path}."), "summary": summary}, issuer=NAME)
        _append(messages, "assistant", [part], merge=True)


def _append(messages: list, role: str, parts: list, *, merge: bool) -> None:
    """Consecutive assistant items (reasoning, text, calls) form one turn, and so do
    consecutive tool outputs: that is the shape Chat and Anthropic need."""
    if merge and messages and messages[-1].role == role:
        last = messages[-1]
        messages[-1] = Message(role, last.parts + tuple(parts), last.extra)
    elif parts or role != "assistant":
        messages.append(Message(role, tuple(parts)))


def _content_in(content: Any, path: str) -> list:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{path}': expected a string or an array.", param=path)
    parts: list = []
    for j, part in enumerate(content):
        where = f"{path}[{j}]."
        kind = require(object_at(part, where[:-1]), "type", str, where)
        if kind in ("input_text", "output_text", "text"):
            parts.append(TextPart(require(part, "text", str, where)))
        elif kind == "refusal":
            parts.append(TextPart(require(part, "refusal", str, where)))
        elif kind == "input_image":
            url = check(part, "image_url", str, where)
            if url is not None and url.startswith("data:") and ";base64," in url:
                head, data = url[5:].split(";base64,", 1)
                parts.append(ImagePart(data=data, media_type=head))
            elif url is not None:
                parts.append(ImagePart(url=url))
    return parts


def _tools_in(raw: list) -> tuple[list, list, list]:
    """Functions (namespaces flattened), server tools, and the tools only a Responses
    upstream can take."""
    tools: list = []
    server: list = []
    others: list = []
    for i, t in enumerate(raw):
        where = f"tools[{i}]."
        kind = require(object_at(t, where[:-1]), "type", str, where)
        if kind == "function":
            tools.append(_function_in(t, where))
        elif kind == "namespace":
            namespace = require(t, "name", str, where)
            for j, inner in enumerate(check(t, "tools", list, where, [])):
                if check(object_at(inner, f"{where}tools[{j}]"), "type", str, f"{where}tools[{j}].") == "function":
                    tools.append(_function_in(inner, f"{where}tools[{j}].", namespace))
        elif kind in SERVER_TOOLS:
            server.append(ServerTool(SERVER_TOOLS[kind], kind, t))
        else:
            others.append(t)
    return tools, server, others


def _function_in(t: dict, where: str, namespace: str | None = None) -> Tool:
    name = require(t, "name", str, where)
    strict = check(t, "strict", bool, where)
    extra: dict = {"strict": strict} if strict is not None else {}
    if namespace is not None:
        extra.update(namespace=namespace, function=name)
    return Tool(flat_name(namespace, name), check(t, "description", str, where, ""),
                check(t, "parameters", dict, where, {}), extra)


TOOL_CHOICES = ("none", "auto", "required")
NOT_FOUND_CODES = {"model": "model_not_found", "previous_response_id": "previous_response_not_found"}


def _tool_choice_in(doc: dict, function_names: set) -> Any:
    """A mode, ``{"name": ...}`` for one of the request's functions, or ``"auto"`` for a
    choice naming a tool only a Responses upstream knows (``allowed_tools``, hosted tools)."""
    choice = check(doc, "tool_choice", (str, dict))
    if isinstance(choice, dict):
        kind = require(choice, "type", str, "tool_choice.")
        name = check(choice, "name", str, "tool_choice.")
        if kind == "function" and name in function_names:
            return {"name": name}
        return "auto"
    if choice is not None and choice not in TOOL_CHOICES:
        raise InvalidRequest(f"Invalid value for 'tool_choice': {choice!r} (expected one of "
                             f"{', '.join(map(repr, TOOL_CHOICES))} or an object).", param="tool_choice")
    return choice


def build_request(req: UnifiedRequest, model: str, **_: Any) -> dict:
    """The upstream body: a Responses client's own body with the model replaced, or a
    translation of another protocol's request (stateless: ``store`` is false)."""
    if req.protocol == NAME:
        body: dict = dict(req.raw)
        body["model"] = model
        if req.prompt_cache_key:
            body.setdefault("prompt_cache_key", req.prompt_cache_key)
        return body
    items: list = []
    for m in req.messages:
        items.extend(_message_out(m))
    body = {"model": model, "input": items, "stream": req.stream, "store": False}
    instructions = "\n\n".join(p.text for p in req.system if isinstance(p, TextPart) and p.text)
    if instructions:
        body["instructions"] = instructions
    tools = [
        {"type": "function", "name": t.name, "description": t.description,
         "parameters": t.parameters or {"type": "object", "properties": {}}, "strict": bool(t.extra.get("strict", False))}
        for t in req.tools
    ]
    tools.extend(req.extra.get("tools") or ())
    tools.extend(wire_tools(req.server_tools, NAME))
    if tools:
        body["tools"] = tools
        if req.tool_choice is not None:
            body["tool_choice"] = _tool_choice_out(req.tool_choice)
    for key, value in (("max_output_tokens", req.max_tokens), ("temperature", req.temperature), ("top_p", req.top_p)):
        if value is not None:
            body[key] = value
    for key in PASSTHROUGH_FIELDS:
        if key in req.extra:
            body[key] = req.extra[key]
    if req.prompt_cache_key:
        body.setdefault("prompt_cache_key", req.prompt_cache_key)
    if req.output_format is not None:
        body["text"] = _text_format_out(req.output_format)
    effort = effort_of(req.reasoning)
    if effort is not None:
        body["reasoning"] = {"effort": effort.value}
        if req.include_encrypted_reasoning and effort is not Effort.NONE:
            # only a reasoning request: other models refuse encrypted content
            include = list(body.get("include") or [])
            if ENCRYPTED_REASONING not in include:
                body["include"] = [*include, ENCRYPTED_REASONING]
    return body


def _tool_choice_out(choice: Any) -> Any:
    if isinstance(choice, dict):
        return {"type": "function", "name": choice.get("name")} if choice.get("name") else "auto"
    return {"any": "required"}.get(choice, choice)


def _message_out(m: Message) -> list:
    out: list = []
    content: list = []

    role = {"assistant": "assistant", "system": "developer"}.get(m.role, "user")

    def flush() -> None:
        if content:
            out.append({"type": "message", "role": role, "content": list(content)})
            content.clear()

    for part in m.parts:
        if isinstance(part, (TextPart, ImagePart)):
            content.append(_part_out(part, m.role))
            continue
        flush()
        if isinstance(part, ToolResultPart):
            out.append(_result_out(part))
        elif isinstance(part, ToolCallPart):
            item = part.extra.get("item")
            if isinstance(item, dict):
                out.append(dict(item))
                continue
            call = {"type": "function_call", "call_id": part.id, "name": part.name, "arguments": part.arguments}
            if str(part.extra.get("id") or "").startswith("fc_"):
                call["id"] = part.extra["id"]
            out.append(call)
        elif isinstance(part, ReasoningPart) and str(part.extra.get("id") or "").startswith("rs_"):
            out.append({"type": "reasoning", "id": part.extra["id"],
                        "summary": part.extra.get("summary") or
                        ([{"type": "summary_text", "text": part.text}] if part.text else []),
                        **({"encrypted_content": part.redacted} if part.redacted_for(NAME) else {})})
    flush()
    return out


def _part_out(part: TextPart | ImagePart, role: str) -> dict:
    if isinstance(part, TextPart):
        return {"type": "output_text" if role == "assistant" else "input_text", "text": part.text}
    url = part.url or f"data:{part.media_type};base64,{part.data}"
    return {"type": "input_image", "image_url": url}


def _result_out(part: ToolResultPart) -> dict:
    item = part.extra.get("item")
    if isinstance(item, dict):
        return dict(item)
    if isinstance(part.content, str):
        output: Any = part.content
    else:
        output = [_part_out(p, "user") for p in part.content if isinstance(p, (TextPart, ImagePart))]
    return {"type": "function_call_output", "call_id": part.call_id, "output": output}


# ---------------------------------------------------------------- responses


def parse_response(doc: dict) -> UnifiedResponse:
    parts: list = []
    for item in doc.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for c in item.get("content") or ():
                if isinstance(c, dict) and c.get("type") in ("output_text", "refusal"):
                    parts.append(TextPart(str(c.get("text") or c.get("refusal") or "")))
        elif kind == "reasoning":
            summary = item.get("summary") or []
            text = "\n\n".join(s.get("text", "") for s in summary if isinstance(s, dict))
            blob = item.get("encrypted_content")
            parts.append(ReasoningPart(text=text, redacted=blob if isinstance(blob, str) else None,
                                       extra={"id": item.get("id")}, issuer=NAME))
        elif kind == "function_call":
            namespace = item.get("namespace") if isinstance(item.get("namespace"), str) else None
            parts.append(ToolCallPart(str(item.get("call_id", "")), flat_name(namespace, str(item.get("name", ""))),
                                      item.get("arguments") or "{}", extra={"id": item.get("id")}))
        elif kind in TOOL_CALL_ITEMS:
            parts.append(ToolCallPart(str(item.get("call_id", "")), str(item.get("name", "")),
                                      str(item.get("input", "")), extra={"item": item}))
    return UnifiedResponse(
        id=str(doc.get("id", "")),
        model=str(doc.get("model", "")),
        parts=tuple(parts),
        finish=finish_from_response(doc),
        usage=normalize(NAME, doc.get("usage")),
    )


def format_response(resp: UnifiedResponse, model: str, request: UnifiedRequest | None = None) -> dict:
    """The client's response object; with the client's ``request``, calls to its
    namespace tools are given back their namespace."""
    names = NamespacedNames.of(request)
    return response_object(response_id(resp.id), model, int(time.time()), status=status_for(resp.finish),
                           output=output_items(resp.parts, names), usage=resp.usage, finish=resp.finish)


def format_error(err: GatewayError) -> dict:
    code = {401: "invalid_api_key", 402: "insufficient_quota", 429: "rate_limit_exceeded"}.get(err.status)
    if err.status == 404 and err.param in NOT_FOUND_CODES:
        code = NOT_FOUND_CODES[err.param]
    return {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": code}}
