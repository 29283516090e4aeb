"""Anthropic Messages: request/response translation, errors, and token counting.

The stream codecs live in ``anthropic_stream`` and are re-exported here, so this
module offers the whole protocol-module interface (``NAME``, ``parse_request``,
``build_request``, ``parse_response``, ``format_response``, ``format_error``,
``StreamDecoder``, ``StreamEncoder``).

An Anthropic client's body is kept in ``raw`` and sent to an Anthropic upstream as
written (model aside), so nothing below is lost on a same-protocol trip. Converting to
or from another protocol is lossy here:

- ``cache_control`` marks, ``citations``, ``metadata``, ``thinking`` budgets, ``top_k``,
  ``tool_choice.disable_parallel_tool_use``, ``context_management`` and every beta
  field have no unified home; they ride in ``extra``/``raw`` and reach only Anthropic
  upstreams.
- Server tools (``web_search_*``, ``web_fetch_*``, ``code_execution_*``; and the
  Anthropic-defined ``bash_*``, ``text_editor_*``, ``computer_*`` ...) become
  ``ServerTool``s: another family's upstream gets its equivalent or the client a 400
  naming the tool (``protocols.server_tools``); blocks
  the unified model cannot hold (``document``, ``server_tool_use``,
  ``web_search_tool_result``, ``search_result``, ``container_upload`` ...) are dropped
  on the way to another protocol.
- ``system`` messages inside ``messages`` (sent by recent Claude Code) stay in place for
  Anthropic. Built from another protocol, a system message inside the conversation stays
  there only for a model that takes them (Claude Opus 4.8) where Anthropic's placement
  rules allow it; otherwise it is appended to the top-level system string.
- Structured output: ``output_config.format`` (or the beta ``output_format``) is read
  into ``OutputFormat``; built for a model with JSON output (Claude 4.5 on) it is
  ``output_config.format``, otherwise a forced ``structured_answer`` tool whose input
  is the answer (``protocols.structured_output``).
- ``thinking`` is read as a reasoning budget and written from any protocol's effort
  (``protocols.reasoning``), kept below ``max_tokens`` (a request without
  ``max_tokens`` gets the budget on top of the default); with thinking on,
  ``temperature`` and ``top_p`` are not sent (Anthropic refuses them) and a forced
  answer tool turns thinking off (Anthropic refuses forced tools with thinking), as
  does an earlier tool-calling assistant turn without signed thinking to replay.
- Reasoning from another provider without an Anthropic signature cannot be replayed
  (Anthropic rejects unsigned thinking), so it is dropped from requests; signed
  thinking and redacted thinking survive. Shown to an Anthropic client (response or
  stream), such reasoning is a ``thinking`` block with an empty signature. Images keep base64 or URL sources; tool results holding images keep
  them (Anthropic accepts image blocks there).
- ``temperature`` above 1 (valid for OpenAI, not Anthropic) is clamped to 1.
- ``max_tokens`` is required by Anthropic: a unified request without one gets
  ``DEFAULT_MAX_TOKENS``.
"""

from __future__ import annotations

from typing import Any

from protocols.anthropic_blocks import BLOCKS_IN, block_in, block_out, rest_of
from protocols.anthropic_stream import StreamDecoder, StreamEncoder
from protocols.anthropic_wire import (
    DEFAULT_MAX_TOKENS,
    FINISH_FROM_WIRE,
    NAME,
    format_error,
    message_id,
    stop_reason,
    usage_to_wire,
)
from protocols.errors import InvalidRequest
from protocols.unified import (
    FinishReason,
    ImagePart,
    Message,
    OutputFormat,
    OutputKind,
    Reasoning,
    ReasoningPart,
    ServerTool,
    ServerToolKind,
    TextPart,
    Tool,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
)
from protocols.reasoning import anthropic_thinking, budget_of, effort_named
from protocols.server_tools import wire_tools
from protocols.structured_output import answer_schema, answer_tool
from protocols.tokens import estimate_request_tokens
from protocols.usage import normalize
from protocols.validate import check, model_name, object_at, require, strings, token_limit

__all__ = [
    "NAME", "parse_request", "build_request", "parse_response", "format_response", "format_error",
    "count_tokens", "StreamDecoder", "StreamEncoder",
]

ROLES = ("user", "assistant", "system")
SERVER_TOOL_PREFIXES = (("web_search_", ServerToolKind.WEB_SEARCH), ("web_fetch_", ServerToolKind.WEB_FETCH),
                        ("code_execution_", ServerToolKind.CODE_EXECUTION))
# Models that take ``role: "system"`` messages inside ``messages``.
POSITIONAL_SYSTEM_MODELS = ("claude-opus-4-8",)
THINKING_MIN_BUDGET = 1024
TOOL_CHOICE_IN = {"auto": "auto", "any": "required", "none": "none"}
TOOL_CHOICE_OUT = {"auto": {"type": "auto"}, "required": {"type": "any"}, "any": {"type": "any"},
                   "none": {"type": "none"}}


# ---------------------------------------------------------------- requests


def parse_request(doc: dict, *, require_max_tokens: bool = True) -> UnifiedRequest:
    """A client's Messages body; ``count_tokens`` bodies have no ``max_tokens``."""
    model = model_name(doc)
    raw_messages = require(doc, "messages", list)
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    max_tokens = token_limit(doc, "max_tokens")
    if require_max_tokens and max_tokens is None:
        raise InvalidRequest("Missing required parameter: 'max_tokens'.", param="max_tokens")
    _check_thinking(check(doc, "thinking", dict))
    messages: list = []
    for i, m in enumerate(raw_messages):
        messages.extend(_message_in(m, f"messages[{i}]."))
    tools, server_tools = _tools_in(check(doc, "tools", list, default=[]))
    extra: dict = {}
    for key in ("metadata", "thinking"):
        if isinstance(doc.get(key), dict):
            extra[key] = doc[key]
    choice = check(doc, "tool_choice", dict)
    return UnifiedRequest(
        protocol=NAME,
        model=model,
        messages=tuple(messages),
        stream=check(doc, "stream", bool, default=False),
        system=_system_in(doc.get("system")),
        tools=tuple(tools),
        tool_choice=_tool_choice_in(choice),
        max_tokens=max_tokens,
        temperature=check(doc, "temperature", (int, float)),
        top_p=check(doc, "top_p", (int, float)),
        stop=strings(doc, "stop_sequences"),
        output_format=_output_format_in(doc),
        reasoning=_reasoning_in(doc),
        server_tools=tuple(server_tools),
        raw=doc,
        extra=extra,
    )


def _output_format_in(doc: dict) -> OutputFormat | None:
    config = check(doc, "output_config", dict)
    if config is not None and check(config, "format", dict, "output_config.") is not None:
        fmt, where = config["format"], "output_config.format."
    elif check(doc, "output_format", dict) is not None:
        fmt, where = doc["output_format"], "output_format."
    else:
        return None
    kind = require(fmt, "type", str, where)
    if kind != "json_schema":
        raise InvalidRequest(f"Invalid value for '{where}type': {kind!r}.", param=f"{where}type")
    return OutputFormat(OutputKind.JSON_SCHEMA, require(fmt, "schema", dict, where))


def _reasoning_in(doc: dict) -> Reasoning | None:
    thinking = doc.get("thinking")
    config: dict = doc["output_config"] if isinstance(doc.get("output_config"), dict) else {}
    effort = effort_named(config.get("effort")) if isinstance(config.get("effort"), str) else None
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        return Reasoning(effort=effort, budget=thinking.get("budget_tokens"))
    if isinstance(thinking, dict) and thinking.get("type") == "disabled":
        return Reasoning(budget=0)
    return Reasoning(effort=effort) if effort is not None else None


def _check_thinking(thinking: dict | None) -> None:
    """``thinking.budget_tokens``: Anthropic takes at least 1,024 and requires it when
    thinking is ``enabled``. It may exceed ``max_tokens`` (interleaved thinking), so the
    two are not compared here; the hold is priced on ``max_tokens``."""
    if thinking is None:
        return
    if check(thinking, "type", str, "thinking.") == "enabled" and thinking.get("budget_tokens") is None:
        raise InvalidRequest("Missing required parameter: 'thinking.budget_tokens' (thinking is enabled).",
                             param="thinking.budget_tokens")
    token_limit(thinking, "budget_tokens", "thinking.", minimum=THINKING_MIN_BUDGET)


def _system_in(system: Any) -> tuple:
    if system is None:
        return ()
    if isinstance(system, str):
        return (TextPart(system),) if system else ()
    if not isinstance(system, list):
        raise InvalidRequest("Invalid type for 'system': expected a string or an array of text blocks.",
                             param="system")
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"'system[{i}]' must be a text block.", param=f"system[{i}]")
        parts.append(TextPart(block["text"], rest_of(block, "text")))
    return tuple(parts)


def _message_in(m: Any, path: str) -> list:
    """One wire message; a user turn's tool results become a unified ``tool`` message."""
    if not isinstance(m, dict):
        raise InvalidRequest(f"Invalid type for '{path[:-1]}': expected an object.", param=path[:-1])
    role = require(m, "role", str, path)
    if role not in ROLES:
        raise InvalidRequest(f"Invalid value for '{path}role': {role!r} (expected 'user' or 'assistant').",
                             param=f"{path}role")
    content = m.get("content")
    if isinstance(content, str):
        return [Message(role, (TextPart(content),) if content else ())]
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid type for '{path}content': expected a string or an array.",
                             param=f"{path}content")
    parts = [p for j, block in enumerate(content) if (p := block_in(block, f"{path}content[{j}]")) is not None]
    results = tuple(p for p in parts if isinstance(p, ToolResultPart))
    rest = tuple(p for p in parts if not isinstance(p, ToolResultPart))
    if not results or role != "user":
        return [Message(role, tuple(parts))]
    return [Message("tool", results)] + ([Message(role, rest)] if rest else [])


def _tools_in(raw: list) -> tuple[list, list]:
    """Custom tools become unified ``Tool``s, the others ``ServerTool``s."""
    tools, server = [], []
    for i, t in enumerate(raw):
        kind = check(object_at(t, f"tools[{i}]"), "type", str, f"tools[{i}].")
        if kind not in (None, "custom"):
            server.append(ServerTool(_server_kind(kind), kind, t))
            continue
        name = require(t, "name", str, f"tools[{i}].")
        schema = check(t, "input_schema", dict, f"tools[{i}].", {})
        tools.append(Tool(name, check(t, "description", str, f"tools[{i}].", ""), schema,
                          rest_of(t, "name", "description", "input_schema")))
    return tools, server


def _server_kind(wire_type: str) -> ServerToolKind:
    for prefix, kind in SERVER_TOOL_PREFIXES:
        if wire_type.startswith(prefix):
            return kind
    return ServerToolKind.OTHER


def _tool_choice_in(choice: dict | None) -> Any:
    if choice is None:
        return None
    kind = require(choice, "type", str, "tool_choice.")
    if kind == "tool":
        return {"name": require(choice, "name", str, "tool_choice.")}
    if kind not in TOOL_CHOICE_IN:
        raise InvalidRequest(f"Invalid value for 'tool_choice.type': {kind!r}.", param="tool_choice.type")
    return TOOL_CHOICE_IN[kind]


def build_request(req: UnifiedRequest, model: str, **_: Any) -> dict:
    """The upstream body: an Anthropic client's own, or one built from unified parts."""
    if req.protocol == NAME:
        body: dict = dict(req.raw)
        body["model"] = model
        return body
    system = [p.text for p in req.system if isinstance(p, TextPart) and p.text]
    positional = model.startswith(POSITIONAL_SYSTEM_MODELS)
    turns: list = []
    for m in req.messages:
        if m.role == "system":
            text = "\n\n".join(p.text for p in m.parts if isinstance(p, TextPart) and p.text)
            if text:
                turns.append({"role": "system", "content": text})
            continue
        blocks = [b for p in m.parts if (b := block_out(p)) is not None]
        role = "assistant" if m.role == "assistant" else "user"
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    turns = _place_system_turns(turns, system, positional)
    for turn in turns:
        # Anthropic wants a user turn's tool results before anything else in it.
        if turn["role"] != "system":
            turn["content"].sort(key=lambda b: b["type"] != "tool_result")
    answer = answer_tool(req, model)
    budget = budget_of(req.reasoning)
    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS + (budget if budget and budget > 0 else 0)
    body = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = "\n\n".join(system)
    tools = [_tool_out(t) for t in req.tools] + wire_tools(req.server_tools, NAME)
    choice = _tool_choice_out(req.tool_choice) if req.tools else None
    if answer is not None and req.output_format is not None:
        tools.append({"name": answer, "description": "Give the final answer; its input is the answer.",
                      "input_schema": answer_schema(req.output_format)})
        forced = not req.tools or req.tool_choice == "none"
        choice = {"type": "tool", "name": answer} if forced else {"type": "any"}
    elif req.output_format is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": answer_schema(req.output_format)}}
    if tools:
        body["tools"] = tools
        if choice is not None:
            body["tool_choice"] = choice
    thinking = None if choice is not None and choice["type"] in ("tool", "any") or not _thinking_replayable(turns) \
        else anthropic_thinking(req.reasoning, max_tokens)
    if thinking is not None:
        body["thinking"] = thinking
    else:
        if req.temperature is not None:
            body["temperature"] = min(float(req.temperature), 1.0)
        if req.top_p is not None:
            body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.stream:
        body["stream"] = True
    return body


def _thinking_replayable(turns: list) -> bool:
    """With thinking on, Anthropic wants every assistant turn that called a tool to open
    with its (signed) thinking; a conversation from another vendor has none to give."""
    for turn in turns:
        blocks = turn["content"] if isinstance(turn["content"], list) else []
        if turn["role"] == "assistant" and any(b.get("type") == "tool_use" for b in blocks):
            if blocks[0].get("type") not in ("thinking", "redacted_thinking"):
                return False
    return True


def _place_system_turns(turns: list, system: list, positional: bool) -> list:
    """System turns stay where they are when the model takes them and Anthropic's
    placement rules hold (not first, after a user turn, then the end or an assistant
    turn, never two in a row); every other one joins the top-level ``system``, and the
    turns it stood between become one."""
    out: list = []
    for i, turn in enumerate(turns):
        if turn["role"] != "system":
            if out and out[-1]["role"] == turn["role"]:
                out[-1]["content"].extend(turn["content"])
            else:
                out.append(turn)
            continue
        after = turns[i + 1]["role"] if i + 1 < len(turns) else None
        if positional and out and out[-1]["role"] == "user" and after in (None, "assistant"):
            out.append(turn)
        else:
            system.append(turn["content"])
    return out


def _tool_out(t: Tool) -> dict:
    tool: dict = {"name": t.name, "input_schema": dict(t.parameters) or {"type": "object", "properties": {}}}
    if t.description:
        tool["description"] = t.description
    return tool


def _tool_choice_out(choice: Any) -> dict | None:
    if isinstance(choice, dict) and choice.get("name"):
        return {"type": "tool", "name": choice["name"]}
    if isinstance(choice, str):
        return TOOL_CHOICE_OUT.get(choice)
    return None


# ---------------------------------------------------------------- responses


def parse_response(doc: dict) -> UnifiedResponse:
    parts = [p for b in doc.get("content") or () if isinstance(b, dict) and (p := _response_block(b)) is not None]
    extra = {"stop_sequence": doc["stop_sequence"]} if doc.get("stop_sequence") else {}
    return UnifiedResponse(
        id=str(doc.get("id", "")),
        model=str(doc.get("model", "")),
        parts=tuple(parts),
        finish=FINISH_FROM_WIRE.get(doc.get("stop_reason") or "end_turn", FinishReason.STOP),
        usage=normalize(NAME, doc.get("usage")),
        extra=extra,
    )


def _response_block(block: dict) -> Any:
    parse = BLOCKS_IN.get(block.get("type", ""))
    if parse is None or block["type"] == "tool_result":
        return None
    try:
        return parse(block, "content.")
    except InvalidRequest:
        return None


def format_response(resp: UnifiedResponse, model: str, **_: Any) -> dict:
    content = [b for p in resp.parts
               if not isinstance(p, (ToolResultPart, ImagePart)) and (b := _response_block_out(p)) is not None]
    return {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(resp.finish, resp.extra.get("stop_sequence")),
        "stop_sequence": resp.extra.get("stop_sequence"),
        "usage": usage_to_wire(resp.usage),
    }


def _response_block_out(p: Any) -> dict | None:
    if isinstance(p, ReasoningPart) and not p.signature_for(NAME) and p.redacted_for(NAME) is None:
        # Reasoning from another provider: shown as thinking, with no signature to check.
        return {"type": "thinking", "thinking": p.text, "signature": ""} if p.text else None
    return block_out(p)


# ---------------------------------------------------------------- count_tokens


def count_tokens(doc: dict) -> dict:
    """``POST /v1/messages/count_tokens``: the gateway's own count of the input
    (``protocols.tokens``: system, messages, tools), validated like a Messages request
    without ``max_tokens``."""
    return {"input_tokens": estimate_request_tokens(parse_request(doc, require_max_tokens=False))}
