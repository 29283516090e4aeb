"""Request adapters: small named edits of an upstream request, with parameters.

Each adapter is a frozen attrs class whose fields are its parameters (the config
reader fills them by their types and refuses unknown ones; ``problems`` adds the rules
a value must follow). ``edit_body(body, ask)`` edits the upstream JSON body -- the wire form
the protocol codec built, or the client's own on a same-protocol pass-through -- and
returns it; ``edit_headers(headers)`` edits the request's headers. Both take a body or
headers the caller owns at the top level; nested objects are copied before a change
(``wire.put``/``wire.pop``).

``PROTOCOLS`` names the upstream protocols an adapter makes sense for (None: all); the
config refuses an adapter on a provider that speaks another. ``RANK`` is the adapter's
place in the fixed order every chain runs in (``chain.ORDER``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs

from providers.adapters import wire

Problems = Any  # an iterator of (relative path, message), as the config reader expects


@attrs.frozen
class Ask:
    """What an adapter may know of the request besides its body: the protocol it is
    sent in and the output limit the client itself set (None: it set none)."""

    protocol: str
    client_max_tokens: int | None = None


class RequestAdapter:
    """The two hooks, both identity by default."""

    NAME: ClassVar[str] = ""
    PROTOCOLS: ClassVar[frozenset[str] | None] = None
    ANSWERS: ClassVar[bool] = False  # edits what the upstream answers (turns byte identity off)

    def edit_body(self, body: dict, ask: Ask) -> dict:
        return body

    def edit_headers(self, headers: dict) -> dict:
        return headers


def _positive(value: int | None, name: str = "value") -> Problems:
    if value is not None and value <= 0:
        yield name, "must be positive"


@attrs.frozen(kw_only=True)
class SystemPrefix(RequestAdapter):
    """A fixed text put before the request's system prompt (made one when there is
    none), in the protocol's own system slot."""

    NAME: ClassVar[str] = "system_prefix"
    text: str

    def problems(self, unread: frozenset[str]) -> Problems:
        if "text" not in unread and not self.text:
            yield "text", "must not be empty"

    def edit_body(self, body: dict, ask: Ask) -> dict:
        _PREFIXERS[ask.protocol](body, self.text)
        return body


def _joined(prefix: str, text: str) -> str:
    return f"{prefix}\n\n{text}" if text else prefix


def _chat_prefix(body: dict, text: str) -> None:
    messages = list(body.get("messages") or [])
    first = messages[0] if messages else None
    if isinstance(first, Mapping) and first.get("role") in ("system", "developer"):
        content = first.get("content")
        if isinstance(content, str):
            messages[0] = {**first, "content": _joined(text, content)}
        elif isinstance(content, list):
            messages[0] = {**first, "content": [{"type": "text", "text": text}, *content]}
        else:
            messages.insert(0, {"role": "system", "content": text})
    else:
        messages.insert(0, {"role": "system", "content": text})
    body["messages"] = messages


def _responses_prefix(body: dict, text: str) -> None:
    current = body.get("instructions")
    body["instructions"] = _joined(text, current) if isinstance(current, str) else text


def _anthropic_prefix(body: dict, text: str) -> None:
    current = body.get("system")
    if isinstance(current, list):
        body["system"] = [{"type": "text", "text": text}, *current]
    else:
        body["system"] = _joined(text, current) if isinstance(current, str) else text


def _gemini_prefix(body: dict, text: str) -> None:
    key = "system_instruction" if "system_instruction" in body else "systemInstruction"
    current = body.get(key)
    parts = list(current.get("parts") or []) if isinstance(current, Mapping) else []
    body[key] = {**(current if isinstance(current, Mapping) else {}), "parts": [{"text": text}, *parts]}


_PREFIXERS = {"openai_chat": _chat_prefix, "openai_responses": _responses_prefix,
              "anthropic": _anthropic_prefix, "gemini": _gemini_prefix}


@attrs.frozen(kw_only=True)
class OneSamplingParam(RequestAdapter):
    """Only one of ``temperature`` and ``top_p`` is sent when both are set (some models
    refuse the pair); ``keep`` says which."""

    NAME: ClassVar[str] = "one_sampling_param"
    keep: Literal["temperature", "top_p"] = "temperature"

    def edit_body(self, body: dict, ask: Ask) -> dict:
        fields = wire.FIELDS[ask.protocol]
        if wire.has(body, fields.temperature) and wire.has(body, fields.top_p):
            wire.pop(body, fields.top_p if self.keep == "temperature" else fields.temperature)
        return body


@attrs.frozen(kw_only=True)
class DefaultMaxTokens(RequestAdapter):
    """The output-token limit sent when the client set none (Anthropic requires one; a
    family default of this adapter supplies it)."""

    NAME: ClassVar[str] = "default_max_tokens"
    value: int

    def problems(self, unread: frozenset[str]) -> Problems:
        yield from _positive(None if "value" in unread else self.value)

    def edit_body(self, body: dict, ask: Ask) -> dict:
        if ask.client_max_tokens is None:
            names = wire.FIELDS[ask.protocol].max_tokens
            present = [n for n in names if wire.has(body, n)]
            for name in present or names[:1]:
                wire.put(body, name, self.value + _thinking_budget(body, ask.protocol))
        return body


def _thinking_budget(body: dict, protocol: str) -> int:
    """An Anthropic thinking budget the codec mapped from the client's effort: it comes on
    top of the answer's own limit (Anthropic refuses a ``max_tokens`` below it)."""
    thinking = body.get("thinking") if protocol == "anthropic" else None
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    return budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 else 0


@attrs.frozen(kw_only=True)
class CapMaxTokens(RequestAdapter):
    """The most output tokens a request may ask the model for: a larger limit is
    lowered to ``value`` (a missing one is left to ``default_max_tokens``)."""

    NAME: ClassVar[str] = "cap_max_tokens"
    value: int

    def problems(self, unread: frozenset[str]) -> Problems:
        yield from _positive(None if "value" in unread else self.value)

    def edit_body(self, body: dict, ask: Ask) -> dict:
        for name in wire.FIELDS[ask.protocol].max_tokens:
            limit = wire.get(body, name)
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > self.value:
                wire.put(body, name, self.value)
        return body


@attrs.frozen(kw_only=True)
class MaxCompletionTokens(RequestAdapter):
    """Chat's ``max_tokens`` sent as ``max_completion_tokens`` (what OpenAI's reasoning
    models and some compatible vendors take); a body with both keeps the latter's."""

    NAME: ClassVar[str] = "max_completion_tokens"
    PROTOCOLS: ClassVar[frozenset[str] | None] = frozenset({"openai_chat"})

    def edit_body(self, body: dict, ask: Ask) -> dict:
        if "max_tokens" in body:
            value = body.pop("max_tokens")
            body.setdefault("max_completion_tokens", value)
        return body


def _paths(values: tuple[str, ...], name: str) -> Problems:
    for i, path in enumerate(values):
        if not path or any(not part for part in path.split(".")):
            yield f"{name}[{i}]", "must be a field name or a dotted path (generationConfig.topP)"


@attrs.frozen(kw_only=True)
class RenameParams(RequestAdapter):
    """Fields sent under another name (``{"from": "to"}``, dotted paths allowed)."""

    NAME: ClassVar[str] = "rename_params"
    params: Mapping[str, str]

    def problems(self, unread: frozenset[str]) -> Problems:
        if "params" in unread:
            return
        if not self.params:
            yield "params", "needs at least one {\"from\": \"to\"} pair"
        yield from _paths(tuple(self.params) + tuple(self.params.values()), "params")

    def edit_body(self, body: dict, ask: Ask) -> dict:
        for old, new in self.params.items():
            if wire.has(body, old):
                wire.put(body, new, wire.pop(body, old))
        return body


@attrs.frozen(kw_only=True)
class DropParams(RequestAdapter):
    """Fields never sent to this upstream (dotted paths allowed), whoever set them."""

    NAME: ClassVar[str] = "drop_params"
    params: tuple[str, ...]

    def problems(self, unread: frozenset[str]) -> Problems:
        if "params" in unread:
            return
        if not self.params:
            yield "params", "needs at least one field name"
        yield from _paths(self.params, "params")

    def edit_body(self, body: dict, ask: Ask) -> dict:
        for path in self.params:
            wire.pop(body, path)
        return body


# Headers an adapter may never set: the upstream credential's, and the ones that frame
# the request on the wire.
PROTECTED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie",
    "host", "content-length", "content-type", "transfer-encoding", "connection", "accept-encoding",
})


@attrs.frozen(kw_only=True)
class ExtraHeaders(RequestAdapter):
    """Headers added to every request to this upstream; never an auth or framing
    header (refused in the config, and skipped if one got here anyway)."""

    NAME: ClassVar[str] = "extra_headers"
    headers: Mapping[str, str]

    def problems(self, unread: frozenset[str]) -> Problems:
        if "headers" in unread:
            return
        if not self.headers:
            yield "headers", "needs at least one header"
        for name in self.headers:
            if name.lower() in PROTECTED_HEADERS:
                yield f"headers.{name}", "may not be set by an adapter (the gateway sets it: credentials, framing)"
            elif not name or any(c in name for c in " :\r\n\t"):
                yield f"headers.{name}", "is not a header name"
        for name, value in self.headers.items():
            if "\r" in value or "\n" in value:
                yield f"headers.{name}", "a header value may not contain a line break"

    def edit_headers(self, headers: dict) -> dict:
        for name, value in self.headers.items():
            if name.lower() not in PROTECTED_HEADERS:
                headers[name.lower()] = value
        return headers
