"""Google Gemini ``generateContent``: request/response translation, errors, counting.

The model and whether to stream come from the URL (``models/{model}:{method}``), not
the body, so ``parse_request`` takes them as arguments; whether a streaming client
asked for ``alt=sse`` is kept in ``extra["gemini_sse"]`` because it picks the stream's
framing (SSE, or one JSON array written element by element). The stream codecs live in
``gemini_stream`` and the shared wire vocabulary in ``gemini_wire``; both are
re-exported here so this module offers the whole protocol-module interface.

A Gemini client's body is kept in ``raw`` and sent to a Gemini upstream as written,
so a same-protocol trip loses nothing (thought signatures included). Converting to or
from another protocol is lossy here:

- Non-function tools (``googleSearch``, ``codeExecution``, ``urlContext`` ...) become
  ``ServerTool``s: another family's upstream gets its equivalent or the client a 400
  naming the tool (``protocols.server_tools``). ``safetySettings``, ``cachedContent``
  and the rest of ``generationConfig`` (``topK``, ``seed``, ``candidateCount`` ...)
  reach only Gemini upstreams.
- JSON output (``responseMimeType: application/json`` with ``responseJsonSchema``, or
  ``responseSchema`` in OpenAPI form, lower-cased) is read into ``OutputFormat`` and
  written as ``responseMimeType`` + ``responseJsonSchema``; ``thinkingConfig`` is read
  as a reasoning budget or level and written from any protocol's effort
  (``protocols.reasoning``: ``thinkingLevel`` for Gemini 3 models).
- System messages inside another protocol's conversation join ``systemInstruction``
  (Gemini has no positional equivalent).
- Parts the unified model cannot hold (``executableCode``, ``codeExecutionResult``,
  ``videoMetadata``) are dropped; ``inlineData``/``fileData`` of any MIME type become
  image parts, which other protocols may refuse for non-images.
- Function calls without an id get a gateway id (``gemini_call_...``) so other
  protocols can pair results with calls; those ids are never sent to Gemini, and an
  id-less ``functionResponse`` is paired with the oldest open call of its name.
- A ``functionResponse.response`` of ``{"output"|"result"|"error": "text"}`` becomes that
  text (``error``: an error result); any other object travels as JSON text. Going to
  Gemini, the original object is restored when known, else ``{"output": text}``.
- ``thoughtSignature`` is kept on a function call (``ToolCallPart.extra``) or as a
  signature-only ``ReasoningPart`` before the part it rode on. Built for a Gemini
  upstream from another protocol, reasoning and foreign signatures are dropped and
  a replayed call without a Gemini signature carries ``SKIP_SIGNATURE``.
- Gemini ends a function-calling turn with ``STOP``; the unified finish is
  ``tool_calls`` when the answer holds a call. Unified ``content_filter`` goes out as
  ``SAFETY``, ``error`` as ``OTHER``. Function-declaration schemas in OpenAPI form
  (``"type": "OBJECT"``) are lower-cased to JSON Schema for other protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.errors import InvalidRequest
from protocols.gemini_stream import StreamDecoder, StreamEncoder
from protocols.gemini_wire import (
    FINISH_FROM_WIRE,
    FINISH_TO_WIRE,
    NAME,
    CallIds,
    field,
    format_error,
    parts_in,
    parts_out,
    snake,
    usage_to_wire,
)
from protocols.unified import (
    FinishReason,
    Message,
    OutputFormat,
    OutputKind,
    Reasoning,
    ServerTool,
    ServerToolKind,
    TextPart,
    Tool,
    ToolCallPart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
)
from protocols.reasoning import LEVEL_EFFORTS, gemini_thinking
from protocols.server_tools import wire_tools
from protocols.tokens import estimate_request_tokens
from protocols.usage import normalize
from protocols.validate import check, check_model_name, strings, token_limit

__all__ = [
    "NAME", "parse_request", "build_request", "parse_response", "format_response", "format_error",
    "count_tokens", "StreamDecoder", "StreamEncoder", "usage_to_wire",
]

SERVER_TOOLS = {
    "googleSearch": ServerToolKind.WEB_SEARCH, "google_search": ServerToolKind.WEB_SEARCH,
    "googleSearchRetrieval": ServerToolKind.WEB_SEARCH, "google_search_retrieval": ServerToolKind.WEB_SEARCH,
    "codeExecution": ServerToolKind.CODE_EXECUTION, "code_execution": ServerToolKind.CODE_EXECUTION,
    "urlContext": ServerToolKind.WEB_FETCH, "url_context": ServerToolKind.WEB_FETCH,
}
ROLES_IN = {"user": "user", "model": "assistant", "function": "user"}
MODES_IN = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
MODES_OUT = {"auto": "AUTO", "required": "ANY", "any": "ANY", "none": "NONE"}
# thinkingBudget: -1 lets the model decide, 0 turns thinking off; any other value is a count.
THINKING_BUDGET_SPECIAL = (-1, 0)
_GENERATION_KNOWN = frozenset(
    name for key in ("maxOutputTokens", "temperature", "topP", "stopSequences", "thinkingConfig")
    for name in (key, snake(key)))


# ---------------------------------------------------------------- requests


def parse_request(doc: Mapping, *, model: str, stream: bool, sse: bool = True) -> UnifiedRequest:
    check_model_name(model)
    contents = field(doc, "contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("* GenerateContentRequest.contents: contents is not specified", param="contents")
    ids = CallIds()
    messages: list = []
    for i, content in enumerate(contents):
        messages.extend(_content_in(content, f"contents[{i}]", ids))
    tools, other_tools = _tools_in(field(doc, "tools"))
    config = field(doc, "generationConfig")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise InvalidRequest("Invalid type for 'generationConfig': expected an object.", param="generationConfig")
    extra: dict = {"gemini_sse": sse}
    thinking = field(config, "thinkingConfig")
    if thinking is not None and not isinstance(thinking, Mapping):
        raise InvalidRequest("Invalid type for 'generationConfig.thinkingConfig': expected an object.",
                             param="generationConfig.thinkingConfig")
    if thinking is not None:
        _limit(thinking, "thinkingBudget", "generationConfig.thinkingConfig.", special=THINKING_BUDGET_SPECIAL)
        extra["thinking_config"] = thinking
    rest = {k: v for k, v in config.items() if k not in _GENERATION_KNOWN}
    if rest:
        extra["generation_config"] = rest
    for key in ("safetySettings", "cachedContent", "labels"):
        if field(doc, key) is not None:
            extra[key] = field(doc, key)
    stop = strings(config, _named(config, "stopSequences"), "generationConfig.")
    choice, allowed = _tool_choice_in(field(doc, "toolConfig"))
    if allowed:
        extra["allowed_function_names"] = allowed
    return UnifiedRequest(
        protocol=NAME,
        model=model,
        messages=tuple(messages),
        stream=stream,
        system=_system_in(field(doc, "systemInstruction")),
        tools=tuple(tools),
        tool_choice=choice,
        max_tokens=_limit(config, "maxOutputTokens", "generationConfig."),
        temperature=_number(config, "temperature", (int, float)),
        top_p=_number(config, "topP", (int, float)),
        stop=stop,
        output_format=_output_format_in(config),
        reasoning=_reasoning_in(thinking),
        server_tools=tuple(ServerTool(SERVER_TOOLS.get(key, ServerToolKind.OTHER), key, {key: value})
                           for tool in other_tools for key, value in tool.items()),
        raw=doc,
        extra=extra,
    )


def _output_format_in(config: Mapping) -> OutputFormat | None:
    mime = field(config, "responseMimeType")
    schema = field(config, "responseJsonSchema")
    if schema is None:
        schema = field(config, "responseSchema")
    if schema is not None:
        # Gemini CLI writes OpenAPI types ("OBJECT") even in responseJsonSchema
        schema = _json_schema(schema)
        if not isinstance(schema, Mapping):
            raise InvalidRequest("Invalid type for 'generationConfig.responseJsonSchema': expected an object.",
                                 param="generationConfig.responseJsonSchema")
        return OutputFormat(OutputKind.JSON_SCHEMA, schema)
    if mime == "application/json":
        return OutputFormat(OutputKind.JSON_OBJECT)
    return None


def _reasoning_in(thinking: Mapping | None) -> Reasoning | None:
    if thinking is None:
        return None
    level = field(thinking, "thinkingLevel")
    effort = LEVEL_EFFORTS.get(level.lower()) if isinstance(level, str) else None
    budget = field(thinking, "thinkingBudget")
    budget = int(budget) if isinstance(budget, (int, float, str)) and str(budget).lstrip("-").isdigit() else None
    if effort is None and budget is None:
        return None
    return Reasoning(effort=effort, budget=budget)


def _named(doc: Mapping, name: str) -> str:
    """The key ``doc`` spells field ``name`` with: its JSON name, or else its proto name."""
    return name if doc.get(name) is not None else snake(name)


def _limit(config: Mapping, name: str, path: str, **rules: Any) -> int | None:
    """A token limit under its JSON or proto name, read as Google's proto JSON reads an
    int32 (``5``, ``5.0`` and ``"5"`` are the same limit)."""
    return token_limit(config, _named(config, name), path, proto_json=True, **rules)


def _number(config: Mapping, name: str, kind: Any) -> Any:
    value = field(config, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequest(f"Invalid value at 'generation_config.{name}': expected a number.",
                             param=f"generationConfig.{name}")
    return value


def _content_in(content: Any, path: str, ids: CallIds) -> list:
    if not isinstance(content, Mapping):
        raise InvalidRequest(f"Invalid type for '{path}': expected an object.", param=path)
    role = check(content, "role", str, f"{path}.") or "user"
    if role not in ROLES_IN:
        raise InvalidRequest(f"Please use a valid role: user, model (got {role!r} at '{path}.role').",
                             param=f"{path}.role")
    parts = tuple(parts_in(content.get("parts", []), f"{path}.parts", ids))
    if role != "model" and parts and all(isinstance(p, ToolResultPart) for p in parts):
        return [Message("tool", parts)]
    return [Message(ROLES_IN[role], parts)]


def _system_in(system: Any) -> tuple:
    if system is None:
        return ()
    if isinstance(system, str):
        return (TextPart(system),) if system else ()
    if not isinstance(system, Mapping) or not isinstance(system.get("parts", []), list):
        raise InvalidRequest("Invalid type for 'systemInstruction': expected a Content object.",
                             param="systemInstruction")
    return tuple(TextPart(p["text"]) for p in system.get("parts", [])
                 if isinstance(p, Mapping) and isinstance(p.get("text"), str))


def _tools_in(raw: Any) -> tuple[list, list]:
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", param="tools")
    tools: list = []
    others: list = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, Mapping):
            raise InvalidRequest(f"Invalid type for 'tools[{i}]': expected an object.", param=f"tools[{i}]")
        declarations = check(tool, _named(tool, "functionDeclarations"), list, f"tools[{i}].", [])
        rest = {k: v for k, v in tool.items() if k not in ("functionDeclarations", "function_declarations")}
        if rest:
            others.append(rest)
        for j, decl in enumerate(declarations):
            path = f"tools[{i}].functionDeclarations[{j}]"
            if not isinstance(decl, Mapping) or not isinstance(decl.get("name"), str):
                raise InvalidRequest(f"'{path}.name' is required.", param=f"{path}.name")
            schema = field(decl, "parametersJsonSchema")
            if schema is None:
                schema = _json_schema(field(decl, "parameters") or {})
            tools.append(Tool(decl["name"], check(decl, "description", str, f"{path}.", ""),
                              schema if isinstance(schema, Mapping) else {}))
    return tools, others


def _json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-style ``parameters`` (``"type": "OBJECT"``) as JSON Schema."""
    if isinstance(schema, list):
        return [_json_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key == "properties" and isinstance(value, Mapping):
            out[key] = {name: _json_schema(v) for name, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf"):
            out[key] = _json_schema(value)
        else:
            out[key] = value
    return out


def _tool_choice_in(config: Any) -> tuple[Any, tuple]:
    calling = field(config, "functionCallingConfig") if isinstance(config, Mapping) else None
    if not isinstance(calling, Mapping):
        return None, ()
    path = "toolConfig.functionCallingConfig."
    mode = (check(calling, "mode", str, path) or "AUTO").upper()
    allowed = strings(calling, _named(calling, "allowedFunctionNames"), path)
    if mode == "ANY" and len(allowed) == 1:
        return {"name": allowed[0]}, allowed
    return MODES_IN.get(mode, "auto"), allowed


def build_request(req: UnifiedRequest, model: str) -> dict:
    """The upstream body (the model goes in the URL). A Gemini client's own body is
    reused as written."""
    if req.protocol == NAME:
        return dict(req.raw)
    names = {p.id: p.name for m in req.messages for p in m.parts if isinstance(p, ToolCallPart)}
    system = [p.text for p in req.system if isinstance(p, TextPart)]
    contents: list[dict] = []
    for m in req.messages:
        if m.role == "system":  # no positional equivalent: it joins systemInstruction
            system.append(m.text())
            continue
        role = "model" if m.role == "assistant" else "user"
        parts = parts_out(m.parts, names, replay=True)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in req.tools]}]
        config = _tool_config(req.tool_choice)
        if config:
            body["toolConfig"] = config
    generation: dict = {}
    for key, value in (("maxOutputTokens", req.max_tokens), ("temperature", req.temperature), ("topP", req.top_p)):
        if value is not None:
            generation[key] = value
    if req.stop:
        generation["stopSequences"] = list(req.stop)
    if req.output_format is not None:
        generation["responseMimeType"] = "application/json"
        if req.output_format.kind is OutputKind.JSON_SCHEMA:
            generation["responseJsonSchema"] = dict(req.output_format.schema)
    thinking = gemini_thinking(req.reasoning, model)
    if thinking is not None:
        generation["thinkingConfig"] = thinking
    if generation:
        body["generationConfig"] = generation
    server = wire_tools(req.server_tools, NAME)
    if server:
        body.setdefault("tools", []).extend(server)
    return body


def _declaration(tool: Tool) -> dict:
    decl: dict = {"name": tool.name}
    if tool.description:
        decl["description"] = tool.description
    if tool.parameters:
        decl["parametersJsonSchema"] = dict(tool.parameters)
    return decl


def _tool_config(choice: Any) -> dict | None:
    if isinstance(choice, Mapping) and choice.get("name"):
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice["name"]]}}
    mode = MODES_OUT.get(choice) if isinstance(choice, str) else None
    return {"functionCallingConfig": {"mode": mode}} if mode else None


# ---------------------------------------------------------------- responses


def parse_response(doc: Any) -> UnifiedResponse:
    """A ``generateContent`` answer; a whole streamed array is folded into one."""
    chunks = doc if isinstance(doc, list) else [doc]
    ids = CallIds()
    parts: list = []
    finish: FinishReason | None = None
    usage = None
    response_id = model = ""
    for chunk in chunks:
        if not isinstance(chunk, Mapping):
            continue
        response_id = field(chunk, "responseId") or response_id
        model = field(chunk, "modelVersion") or model
        usage = normalize(NAME, field(chunk, "usageMetadata")) or usage
        candidate = (chunk.get("candidates") or [{}])[0]
        content = candidate.get("content") or {}
        parts.extend(parts_in(content.get("parts") or [], "candidates[0].content.parts", ids))
        reason = field(candidate, "finishReason")
        if reason:
            finish = FINISH_FROM_WIRE.get(reason, FinishReason.STOP)
        feedback = field(chunk, "promptFeedback")
        if isinstance(feedback, Mapping) and field(feedback, "blockReason"):
            finish = FinishReason.CONTENT_FILTER
    if finish in (None, FinishReason.STOP) and any(isinstance(p, ToolCallPart) for p in parts):
        finish = FinishReason.TOOL_CALLS
    return UnifiedResponse(id=response_id, model=model, parts=tuple(_merge_text(parts)),
                           finish=finish or FinishReason.STOP, usage=usage)


def _merge_text(parts: list) -> list:
    """Adjacent plain text parts (one per streamed chunk) joined into one."""
    out: list = []
    for p in parts:
        if isinstance(p, TextPart) and out and isinstance(out[-1], TextPart) and not p.extra:
            out[-1] = TextPart(out[-1].text + p.text, out[-1].extra)
        else:
            out.append(p)
    return out


def format_response(resp: UnifiedResponse, model: str, **_: Any) -> dict:
    parts = parts_out(resp.parts, {}, replay=False) or [{"text": ""}]
    doc: dict = {
        "candidates": [{
            "content": {"parts": parts, "role": "model"},
            "finishReason": FINISH_TO_WIRE[resp.finish],
            "index": 0,
        }],
    }
    if resp.usage is not None:
        doc["usageMetadata"] = usage_to_wire(resp.usage)
    doc["modelVersion"] = model
    doc["responseId"] = resp.id or "tollhouse"
    return doc


# ---------------------------------------------------------------- countTokens


def count_tokens(doc: dict) -> dict:
    """``countTokens``: the gateway's own count of what the request would be billed as
    input (``protocols.tokens``), for a bare request or one wrapped in
    ``generateContentRequest``; validated like ``generateContent``."""
    inner = field(doc, "generateContentRequest")
    source = inner if isinstance(inner, Mapping) else doc
    return {"totalTokens": estimate_request_tokens(parse_request(source, model="", stream=False))}
