"""Anthropic Messages content blocks <-> unified parts, both directions: text, image,
tool use and result, thinking and redacted thinking. ``anthropic_messages`` reads and
writes whole requests and responses with these; blocks of unknown types are skipped
on the way in (``block_in`` answers None) and parts without an Anthropic form on the
way out.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from protocols.errors import InvalidRequest
from protocols.unified import ImagePart, ReasoningPart, TextPart, ToolCallPart, ToolResultPart
from protocols.anthropic_wire import NAME
from protocols.validate import check, require


def rest_of(block: dict, *known: str) -> dict:
    """The block's fields the unified part has no slot for (cache_control, citations ...)."""
    return {k: v for k, v in block.items() if k != "type" and k not in known}


def block_in(block: Any, path: str) -> Any:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InvalidRequest(f"'{path}' must be an object with a 'type'.", param=path)
    parse = BLOCKS_IN.get(block["type"])
    return parse(block, path + ".") if parse else None


def _text_in(block: dict, path: str) -> TextPart:
    return TextPart(require(block, "text", str, path), rest_of(block, "text"))


def _image_in(block: dict, path: str) -> ImagePart:
    source = require(block, "source", dict, path)
    kind = check(source, "type", str, f"{path}source.")
    if kind == "base64":
        return ImagePart(data=require(source, "data", str, f"{path}source."),
                         media_type=require(source, "media_type", str, f"{path}source."), extra=rest_of(block, "source"))
    if kind == "url":
        return ImagePart(url=require(source, "url", str, f"{path}source."), extra=rest_of(block, "source"))
    return ImagePart(extra=rest_of(block))


def _tool_use_in(block: dict, path: str) -> ToolCallPart:
    call_id = require(block, "id", str, path)
    name = require(block, "name", str, path)
    args = block.get("input")
    return ToolCallPart(call_id, name, json.dumps(args if args is not None else {}, ensure_ascii=False),
                        rest_of(block, "id", "name", "input"))


def _tool_result_in(block: dict, path: str) -> ToolResultPart:
    call_id = require(block, "tool_use_id", str, path)
    content = block.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = tuple(p for j, b in enumerate(content)
                        if (p := block_in(b, f"{path}content[{j}]")) is not None)
    elif not isinstance(content, str):
        raise InvalidRequest(f"Invalid type for '{path}content': expected a string or an array.",
                             param=f"{path}content")
    return ToolResultPart(call_id, content, bool(check(block, "is_error", bool, path, False)),
                          extra=rest_of(block, "tool_use_id", "content", "is_error"))


def _thinking_in(block: dict, path: str) -> ReasoningPart:
    return ReasoningPart(text=check(block, "thinking", str, path, ""), signature=check(block, "signature", str, path),
                         extra=rest_of(block, "thinking", "signature"), issuer=NAME)


def _redacted_in(block: dict, path: str) -> ReasoningPart:
    return ReasoningPart(redacted=require(block, "data", str, path), extra=rest_of(block, "data"), issuer=NAME)


BLOCKS_IN: dict[str, Callable[[dict, str], Any]] = {
    "text": _text_in,
    "image": _image_in,
    "tool_use": _tool_use_in,
    "tool_result": _tool_result_in,
    "thinking": _thinking_in,
    "redacted_thinking": _redacted_in,
}


def block_out(p: Any) -> dict | None:
    out = BLOCKS_OUT.get(type(p))
    return out(p) if out else None


def _text_out(p: TextPart) -> dict | None:
    return {"type": "text", "text": p.text} if p.text else None


def _image_out(p: ImagePart) -> dict | None:
    if p.data is not None:
        return {"type": "image", "source": {"type": "base64", "media_type": p.media_type or "image/png", "data": p.data}}
    if p.url:
        return {"type": "image", "source": {"type": "url", "url": p.url}}
    return None


def _tool_use_out(p: ToolCallPart) -> dict:
    try:
        args = json.loads(p.arguments) if p.arguments.strip() else {}
    except ValueError:
        args = {"_raw_arguments": p.arguments}
    if not isinstance(args, dict):
        args = {"value": args}
    return {"type": "tool_use", "id": p.id, "name": p.name, "input": args}


def _tool_result_out(p: ToolResultPart) -> dict:
    if isinstance(p.content, str):
        content: Any = p.content
    else:
        content = [b for x in p.content if isinstance(x, (TextPart, ImagePart)) and (b := block_out(x)) is not None]
    block = {"type": "tool_result", "tool_use_id": p.call_id, "content": content}
    if p.is_error:
        block["is_error"] = True
    return block


def _reasoning_out(p: ReasoningPart) -> dict | None:
    """Only what Anthropic signed goes back to it: another vendor's signature or blob
    would be refused (``Invalid `signature```), and unsigned thinking cannot be replayed."""
    redacted = p.redacted_for(NAME)
    if redacted is not None and not p.text:
        return {"type": "redacted_thinking", "data": redacted}
    signature = p.signature_for(NAME)
    if signature:
        return {"type": "thinking", "thinking": p.text, "signature": signature}
    return None


BLOCKS_OUT: dict[type, Callable[[Any], dict | None]] = {
    TextPart: _text_out,
    ImagePart: _image_out,
    ToolCallPart: _tool_use_out,
    ToolResultPart: _tool_result_out,
    ReasoningPart: _reasoning_out,
}
