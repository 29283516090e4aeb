"""Gemini wire vocabulary shared by the request, response and stream codecs.

Parts are where Gemini differs most from the other protocols: a ``functionCall``
arrives whole (no argument deltas) and may carry no id, a ``functionResponse`` names
its function rather than a call id, and reasoning is a ``thought: true`` text part or a
``thoughtSignature`` attached to whichever part follows the thinking. Both directions
of that mapping live here so requests, responses and streams agree on it.

Google's JSON parser accepts a field's proto name (``parameters_json_schema``) as well
as its JSON name (``parametersJsonSchema``), and the official Python SDK sends some in
snake case, so every read goes through ``field``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from protocols.errors import GatewayError, InvalidRequest
from protocols.unified import (
    FinishReason,
    ImagePart,
    ReasoningPart,
    TextPart,
    ToolCallPart,
    ToolResultPart,
    Usage,
)

NAME = "gemini"

GENERATED_ID_PREFIX = "gemini_call_"
"""Ids the gateway made up for id-less Gemini function calls; never sent upstream."""

SKIP_SIGNATURE = "skip_thought_signature_validator"
"""Google's documented stand-in signature for function calls Gemini did not produce
(Gemini 3 rejects a replayed call without one); Gemini CLI sends the same value."""

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"

FINISH_FROM_WIRE = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "LANGUAGE": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": FinishReason.ERROR,
    "UNEXPECTED_TOOL_CALL": FinishReason.ERROR,
    "TOO_MANY_TOOL_CALLS": FinishReason.ERROR,
    "OTHER": FinishReason.STOP,
    "FINISH_REASON_UNSPECIFIED": FinishReason.STOP,
}
FINISH_TO_WIRE = {
    FinishReason.STOP: "STOP",
    FinishReason.LENGTH: "MAX_TOKENS",
    FinishReason.TOOL_CALLS: "STOP",  # Gemini ends a function-calling turn with STOP
    FinishReason.CONTENT_FILTER: "SAFETY",
    FinishReason.ERROR: "OTHER",
}

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}

_CAPITALS = re.compile(r"(?<!^)(?=[A-Z])")


def snake(name: str) -> str:
    return _CAPITALS.sub("_", name).lower()


def field(doc: Mapping[str, Any], name: str) -> Any:
    """``doc[name]`` by its JSON (camelCase) name or its proto (snake_case) name."""
    value = doc.get(name)
    if value is None:
        value = doc.get(snake(name))
    return value


def format_error(err: GatewayError) -> dict:
    """Google's error envelope; a known wait goes out as a ``RetryInfo`` detail, the
    only place Gemini clients look for it."""
    status = STATUS_NAMES.get(err.status, "INVALID_ARGUMENT" if err.status < 500 else "INTERNAL")
    body: dict = {"code": err.status, "message": err.message, "status": status}
    if err.retry_after is not None:
        body["details"] = [{"@type": RETRY_INFO, "retryDelay": f"{max(0, int(err.retry_after + 0.999))}s"}]
    return {"error": body}


def usage_to_wire(u: Usage) -> dict:
    prompt = u.input + u.cached_input + u.cache_write
    wire = {"promptTokenCount": prompt, "candidatesTokenCount": u.output, "totalTokenCount": u.total}
    if u.cached_input:
        wire["cachedContentTokenCount"] = u.cached_input
    if u.reasoning:
        wire["thoughtsTokenCount"] = u.reasoning
    return wire


# ---------------------------------------------------------------- parts in


class CallIds:
    """Gives id-less function calls an id and matches id-less responses to them by name
    (the oldest unanswered call of that name), within one conversation."""

    def __init__(self, prefix: str = GENERATED_ID_PREFIX) -> None:
        self.prefix = prefix
        self.count = 0
        self.open: dict[str, list[str]] = {}

    def call(self, name: str, given: Any) -> str:
        call_id = given if isinstance(given, str) and given else f"{self.prefix}{self.count}_{name}"
        self.count += 1
        self.open.setdefault(name, []).append(call_id)
        return call_id

    def result(self, name: str, given: Any) -> str:
        waiting = self.open.get(name) or []
        if isinstance(given, str) and given:
            if given in waiting:
                waiting.remove(given)
            return given
        if waiting:
            return waiting.pop(0)
        self.count += 1
        return f"{self.prefix}{self.count - 1}_{name}"


def _result_in(response: Any) -> tuple[str, bool]:
    """A function's ``response`` object as unified text: Gemini's documented
    ``{"output": ...}``/``{"error": ...}`` (and the SDK's ``{"result": ...}``) unwrap to
    their string; anything else travels as JSON."""
    if isinstance(response, Mapping) and len(response) == 1:
        (key, value), = response.items()
        if isinstance(value, str) and key in ("output", "result", "error"):
            return value, key == "error"
    return json.dumps(response if response is not None else {}, ensure_ascii=False), False


def parts_in(raw_parts: Any, path: str, ids: CallIds) -> list:
    """Wire parts -> unified parts. Unknown kinds (code execution, video metadata) are
    dropped: only a same-protocol trip, which reuses the raw body, keeps them."""
    if not isinstance(raw_parts, list):
        raise InvalidRequest(f"Invalid type for '{path}': expected an array.", param=path)
    out: list = []
    for j, part in enumerate(raw_parts):
        p = f"{path}[{j}]"
        if not isinstance(part, Mapping):
            raise InvalidRequest(f"Invalid type for '{p}': expected an object.", param=p)
        signature = field(part, "thoughtSignature")
        signature = signature if isinstance(signature, str) else None
        text = part.get("text")
        if text is not None:
            if not isinstance(text, str):
                raise InvalidRequest(f"Invalid type for '{p}.text': expected a string.", param=f"{p}.text")
            if part.get("thought") is True:
                out.append(ReasoningPart(text=text, signature=signature, issuer=NAME))
                continue
            if signature:
                out.append(ReasoningPart(signature=signature, issuer=NAME))
            if text or not signature:
                out.append(TextPart(text))
            continue
        call = field(part, "functionCall")
        if call is not None:
            out.append(_call_in(call, f"{p}.functionCall", signature, ids))
            continue
        response = field(part, "functionResponse")
        if response is not None:
            out.append(_response_in(response, f"{p}.functionResponse", ids))
            continue
        inline = field(part, "inlineData")
        if isinstance(inline, Mapping):
            out.append(ImagePart(data=_text_field(inline, "data", f"{p}.inlineData") or "",
                                 media_type=_text_field(inline, "mimeType", f"{p}.inlineData")))
            continue
        file_data = field(part, "fileData")
        if isinstance(file_data, Mapping):
            out.append(ImagePart(url=_text_field(file_data, "fileUri", f"{p}.fileData") or "",
                                 media_type=_text_field(file_data, "mimeType", f"{p}.fileData")))
            continue
        if signature:
            out.append(ReasoningPart(signature=signature, issuer=NAME))
    return out


def _text_field(doc: Mapping, name: str, path: str) -> str | None:
    """A string field under either spelling; ``None`` if absent, a 400 if not a string."""
    value = field(doc, name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{path}.{name}': expected a string.", param=f"{path}.{name}")
    return value


def _call_in(call: Any, path: str, signature: str | None, ids: CallIds) -> ToolCallPart:
    if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
        raise InvalidRequest(f"'{path}.name' is required.", param=f"{path}.name")
    args = call.get("args")
    extra = {"thoughtSignature": signature} if signature else {}
    call_id = ids.call(call["name"], call.get("id"))
    return ToolCallPart(call_id, call["name"], json.dumps(args if args is not None else {}, ensure_ascii=False), extra)


def _response_in(response: Any, path: str, ids: CallIds) -> ToolResultPart:
    if not isinstance(response, Mapping) or not isinstance(response.get("name"), str):
        raise InvalidRequest(f"'{path}.name' is required.", param=f"{path}.name")
    name = response["name"]
    content, is_error = _result_in(response.get("response"))
    return ToolResultPart(ids.result(name, response.get("id")), content, is_error, name,
                          {"response": response.get("response")})


# ---------------------------------------------------------------- parts out


def call_out(part: ToolCallPart) -> dict:
    """A whole function call; arguments that are not a JSON object are wrapped."""
    try:
        args = json.loads(part.arguments) if part.arguments.strip() else {}
    except ValueError:
        args = {"arguments": part.arguments}
    if not isinstance(args, dict):
        args = {"value": args}
    call: dict = {"name": part.name, "args": args}
    if part.id and not part.id.startswith(GENERATED_ID_PREFIX):
        call["id"] = part.id
    return call


def result_out(part: ToolResultPart, name: str) -> dict:
    response = part.extra.get("response") if isinstance(part.extra, Mapping) else None
    if not isinstance(response, Mapping):
        if isinstance(part.content, str):
            text = part.content
        else:
            text = "".join(p.text for p in part.content if isinstance(p, TextPart))
        response = {"error" if part.is_error else "output": text}
    out: dict = {"name": name, "response": response}
    if part.call_id and not part.call_id.startswith(GENERATED_ID_PREFIX):
        out["id"] = part.call_id
    return out


def image_out(part: ImagePart) -> dict:
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type or "application/octet-stream", "data": part.data}}
    url = part.url or ""
    if url.startswith("data:") and ";base64," in url:
        head, data = url[5:].split(";base64,", 1)
        return {"inlineData": {"mimeType": head, "data": data}}
    return {"fileData": {"mimeType": part.media_type or "image/jpeg", "fileUri": url}}


def parts_out(parts: tuple | list, names: Mapping[str, str], *, replay: bool) -> list[dict]:
    """Unified parts -> wire parts.

    ``replay=False`` renders the model's own answer for a Gemini client: reasoning
    becomes thought parts and a signature rides on the part after it, as Gemini sends
    them. ``replay=True`` builds history for a Gemini upstream from another protocol:
    reasoning text and foreign signatures are dropped (Gemini rejects signatures it did
    not issue), a signature Gemini issued rides on the part after it, a call keeps the
    signature Gemini gave it, and the first call of a turn without one gets
    ``SKIP_SIGNATURE``.
    """
    out: list[dict] = []
    pending: str | None = None
    first_call = True
    for p in parts:
        if isinstance(p, ReasoningPart):
            signature = p.signature_for(NAME)  # another vendor's would be refused by Gemini
            if replay:
                pending = signature or pending  # Gemini's own (the field cache's) rides on the next part
                continue
            if p.text:
                d = {"text": p.text, "thought": True}
                if signature:
                    d["thoughtSignature"] = signature
                out.append(d)
            elif signature:
                pending = signature
            continue
        if isinstance(p, TextPart):
            d = {"text": p.text}
        elif isinstance(p, ToolCallPart):
            d = {"functionCall": call_out(p)}
            signature = p.extra.get("thoughtSignature") if isinstance(p.extra, Mapping) else None
            if signature:
                d["thoughtSignature"] = signature
            elif replay and first_call:
                d["thoughtSignature"] = SKIP_SIGNATURE
            first_call = False
        elif isinstance(p, ToolResultPart):
            d = {"functionResponse": result_out(p, p.name or names.get(p.call_id) or "function")}
        elif isinstance(p, ImagePart):
            d = image_out(p)
        else:
            continue
        if pending and "thoughtSignature" not in d:
            d["thoughtSignature"] = pending
        pending = None
        out.append(d)
    if pending:
        out.append({"text": "", "thoughtSignature": pending})
    return out
