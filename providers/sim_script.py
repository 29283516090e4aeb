"""What the simulator says: deterministic answers and the faults it was asked for.

The answer depends only on the request: a tool result in the last turn is answered
with text that quotes it; a request offering tools (and not yet answered) gets a call
to one of them, with arguments valid for its JSON schema; a request for JSON output
(read from the protocol's own field: ``response_format``, ``text.format``,
``output_config.format``, ``responseJsonSchema``) gets JSON valid for its schema;
anything else gets a fixed sentence. System turns after the last user turn are not
what is answered: the turn before them is. Usage is derived from the request size and the answer's words, so tests
can predict it exactly.

Faults are requested in the model name (``sim-chat+status=429+retry_after=30``), in
the prompt (``[[sim status=503]]``), or per credential by the program that runs the
simulator. Options: ``status``, ``retry_after``, ``retry_after_ms``, ``ttfb_stall``
(seconds before the response starts), ``stall_after`` (chunks, then silence),
``disconnect_after`` (chunks, then the connection drops), ``error_after`` (chunks,
then the protocol's in-stream error event), ``no_usage``, ``reject_stream_options``
(``openai``/``azure``/``vllm``/``mistral``: the real error bodies), ``tokens`` (answer
length in words) and ``text`` (a literal answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

from protocols.unified import (
    Finish,
    FinishReason,
    OutputKind,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
    Usage,
    UsageReport,
)
from protocols.usage import estimate_tokens

WORDS = ("Hello", " from", " the", " Tollhouse", " simulator.", " This", " answer", " is", " deterministic",
         " and", " every", " word", " is", " one", " token.")
DEFAULT_TOKENS = 12
# Harmless tools first: agent CLIs offer shells and editors too.
PREFERRED_TOOLS = ("get_weather", "read_file", "Read", "exec_command", "shell", "list_directory", "LS", "Glob",
                   "glob", "ls")
_TAGGED = re.compile(r"<([a-z_-]+)>.*?</\1>", re.S)
_PATH = re.compile(r"(?<![\w.~])(/[\w.-]+(?:/[\w.-]+)+)")
_DIRECTIVE = re.compile(r"\[\[sim ([^\]]*)\]\]")


@attrs.frozen
class Fault:
    status: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    ttfb_stall: float | None = None
    stall_after: int | None = None
    disconnect_after: int | None = None
    error_after: int | None = None
    hold_open: bool = False
    no_usage: bool = False
    reject_stream_options: str | None = None
    tokens: int | None = None
    text: str | None = None

    @staticmethod
    def parse(spec: str, sep: str = "+") -> "Fault":
        values: dict[str, Any] = {}
        fields = attrs.fields_dict(Fault)
        for item in filter(None, (s.strip() for s in spec.split(sep))):
            name, _, value = item.partition("=")
            if name not in fields:
                continue
            if name in ("status", "stall_after", "disconnect_after", "error_after", "tokens"):
                values[name] = int(value)
            elif name == "ttfb_stall":
                values[name] = float(value)
            elif name in ("no_usage", "hold_open"):
                values[name] = value.lower() not in ("0", "false", "no")
            else:
                values[name] = value
        return Fault(**values)

    def merge(self, other: "Fault") -> "Fault":
        changes = {k: v for k, v in attrs.asdict(other).items() if v not in (None, False)}
        return attrs.evolve(self, **changes)


def fault_for(model: str, req: UnifiedRequest | None, key_fault: Fault | None) -> Fault:
    fault = key_fault or Fault()
    _, plus, spec = model.partition("+")
    if plus:
        fault = fault.merge(Fault.parse(spec))
    if req is not None:
        for m in [m for m in req.messages if m.role != "system"][-1:]:
            for match in _DIRECTIVE.finditer(m.text()):
                fault = fault.merge(Fault.parse(match.group(1), sep=" "))
    return fault


def base_model(model: str) -> str:
    return model.partition("+")[0]


@attrs.frozen
class Answer:
    """The simulator's reply as unified events and as a whole response."""

    events: tuple
    response: UnifiedResponse
    opening: tuple = ()  # usage known at the start, sent with the first event


def answer(req: UnifiedRequest, body_bytes: int, fault: Fault, response_id: str) -> Answer:
    model = base_model(req.model)
    last = next((m for m in reversed(req.messages) if m.role != "system"), None)
    results = [p for p in (last.parts if last else ()) if isinstance(p, ToolResultPart)]
    # Providers report the input count when the stream starts (Anthropic's message_start,
    # Gemini's first chunk) and the full usage at the end.
    early = () if fault.no_usage else (UsageReport(Usage(input=estimate_tokens(body_bytes))),)
    chunks: list = [StreamStart(response_id, model)]
    parts: list = []
    if fault.text is not None:
        words = _split(fault.text)
        finish = FinishReason.STOP
    elif results:
        content = results[0].content
        text = content if isinstance(content, str) else "".join(getattr(p, "text", "") for p in content)
        words = _split(f"The tool returned: {text[:200]}")
        finish = FinishReason.STOP
    elif req.tools and req.tool_choice != "none":
        tool = _pick_tool(req)
        # Agents wrap their context in tags and spread the prompt over several turns.
        prompts = [_TAGGED.sub("", m.text()) for m in req.messages if m.role == "user"]
        found = [p for text in prompts for p in _PATH.findall(text)]
        hints = {"path": found[-1].rstrip(".")} if found else {}
        args = json.dumps(example_for(tool.parameters or {}, hints=hints), separators=(",", ":"))
        call_id = f"call_{response_id[-12:]}"
        chunks.append(ToolCallStart(0, call_id, tool.name))
        half = len(args) // 2
        chunks.extend(ToolCallDelta(0, piece) for piece in (args[:half], args[half:]) if piece)
        parts.append(ToolCallPart(call_id, tool.name, args))
        words = []
        finish = FinishReason.TOOL_CALLS
    elif req.output_format is not None:
        schema = req.output_format.schema if req.output_format.kind is OutputKind.JSON_SCHEMA else {}
        value = example_for(schema) if schema else {"answer": "".join(WORDS[:5]).strip()}
        words = _split(json.dumps(value))
        finish = FinishReason.STOP
    else:
        n = fault.tokens if fault.tokens is not None else DEFAULT_TOKENS
        words = [WORDS[i % len(WORDS)] for i in range(n)]
        finish = FinishReason.STOP
    if req.max_tokens is not None and len(words) > req.max_tokens:
        words = words[: req.max_tokens]
        finish = FinishReason.LENGTH
    chunks.extend(TextDelta(w) for w in words)
    if words:
        parts.insert(0, TextPart("".join(words)))
    output = len(words) + (estimate_tokens(len(parts[-1].arguments)) if finish is FinishReason.TOOL_CALLS else 0)
    usage = Usage(input=estimate_tokens(body_bytes), output=output)
    chunks.append(Finish(finish))
    if not fault.no_usage:
        chunks.append(UsageReport(usage))
    response = UnifiedResponse(response_id, model, tuple(parts), finish, None if fault.no_usage else usage)
    return Answer(tuple(chunks), response, early)


def _split(text: str) -> list[str]:
    pieces = re.findall(r"\s*\S+", text)
    return pieces or [text]


def _pick_tool(req: UnifiedRequest):
    if isinstance(req.tool_choice, Mapping) and req.tool_choice.get("name"):
        for tool in req.tools:
            if tool.name == req.tool_choice["name"]:
                return tool
    by_name = {t.name: t for t in req.tools}
    for name in PREFERRED_TOOLS:
        if name in by_name:
            return by_name[name]
    return req.tools[0]


def example_for(schema: Mapping[str, Any], name: str = "", hints: Mapping[str, str] | None = None) -> Any:
    """A value that satisfies a (simple) JSON schema: required properties, enums, types.

    ``hints`` carries an absolute path seen in the prompt, used for path-like fields
    (and ``cat``-ed for command fields), so a scripted agent reads the file it was
    asked about rather than something arbitrary.
    """
    hints = hints or {}
    if not isinstance(schema, Mapping):
        return "example"
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return example_for(schema[key][0], name, hints)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)[:1]
        return {k: example_for(props.get(k, {}), k, hints) for k in required if k in props}
    if kind == "array":
        return []
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if name in ("path", "file_path", "absolute_path", "dir_path", "directory"):
        return hints.get("path", ".")
    if name in ("cmd", "command"):
        return f"cat {hints['path']}" if "path" in hints else "echo hello"
    if name in ("location", "city"):
        return "Paris"
    return "example"
