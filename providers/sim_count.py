"""The simulator's counting endpoints: Anthropic ``/v1/messages/count_tokens`` and
Gemini ``models/{m}:countTokens``.

It counts with a rule of its own -- one token per whitespace-separated word of the
system prompt, the messages' text and the tools' names and descriptions, plus 3 per
message (``sim_tokens``) -- not with the gateway's BPE estimate, so a test can tell
which one answered. Anthropic's endpoint refuses ``max_tokens`` and ``stream`` as the
real one does (400 ``invalid_request_error``); a key or model fault with a status
answers with that error.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import attrs

from protocols import anthropic_messages, gemini
from protocols.errors import InvalidRequest
from protocols.unified import TextPart, UnifiedRequest

PER_MESSAGE = 3
_NOT_COUNTED = ("max_tokens", "stream", "temperature", "top_p", "stop_sequences")


def sim_tokens(req: UnifiedRequest) -> int:
    words = sum(len(p.text.split()) for p in req.system if isinstance(p, TextPart))
    words += sum(len(m.text().split()) for m in req.messages)
    words += sum(len(f"{t.name} {t.description}".split()) for t in req.tools)
    return words + PER_MESSAGE * len(req.messages)


def _anthropic(match: re.Match, query: dict, doc: dict) -> UnifiedRequest:
    for name in _NOT_COUNTED:
        if name in doc:
            raise InvalidRequest(f"{name}: Extra inputs are not permitted", param=name)
    return anthropic_messages.parse_request(doc, require_max_tokens=False)


def _gemini(match: re.Match, query: dict, doc: dict) -> UnifiedRequest:
    inner = doc.get("generateContentRequest")
    if isinstance(inner, dict):
        if not str(inner.get("model", "")).startswith("models/"):
            raise InvalidRequest("generateContentRequest.model must be 'models/{model}'", param="model")
        return gemini.parse_request(inner, model=match["model"], stream=False)
    return gemini.parse_request(doc, model=match["model"], stream=False)


@attrs.frozen
class SimCount:
    """One counting endpoint: its path, how its body is read, the field it answers in."""

    protocol: str
    path: re.Pattern
    parse: Callable[[re.Match, dict, dict], UnifiedRequest]
    field: str

    def answer(self, req: UnifiedRequest) -> dict[str, Any]:
        return {self.field: sim_tokens(req)}


COUNTS = [
    SimCount(anthropic_messages.NAME, re.compile(r"^/v1/messages/count_tokens$"), _anthropic, "input_tokens"),
    SimCount(gemini.NAME, re.compile(r"^/(v1beta|v1)/models/(?P<model>[^:]+):countTokens$"), _gemini, "totalTokens"),
]
