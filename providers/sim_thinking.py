"""The simulator's thinking, signed per family, and its check of what comes back.

Real upstreams sign their reasoning so that only they can read it back: Anthropic
thinking blocks carry a ``signature`` (``redacted_thinking`` an opaque ``data``), Gemini
parts a ``thoughtSignature``. The simulator does the same with an HMAC over the
thinking text under a secret made per process and per family, so a signature from
another family (or an altered text) does not verify. An Anthropic-family simulator
answers a request that replays a block it cannot verify with the 400 the real API
gives (``Invalid `signature` in `thinking` block``), and one whose open tool cycle
has no thinking while thinking is ``enabled`` (adaptive thinking may skip it) with
the real API's other 400; a Gemini-family
simulator refuses a ``thoughtSignature`` it did not issue (Google's documented
``skip_thought_signature_validator`` aside); a Responses-family simulator gives its
reasoning item an ``encrypted_content`` and refuses one it cannot verify.

Thinking is emitted when the request asks for it: Anthropic ``thinking`` enabled or
adaptive; Gemini a ``thinkingConfig`` whose budget is not 0 (a thought summary and
the signature on the part after it; the summary comes as if ``includeThoughts`` were
set); Responses a reasoning item (summary, ``encrypted_content``) when ``include``
asks for ``reasoning.encrypted_content`` and the effort is not ``none``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import attrs

from protocols.errors import InvalidRequest
from protocols.gemini_wire import SKIP_SIGNATURE
from protocols.unified import ReasoningDelta, ReasoningPart, StreamStart
from providers.sim_script import Answer

THOUGHT = "The user wants an answer; a tool may help."
ENCRYPTED = "reasoning.encrypted_content"


@attrs.frozen
class Signer:
    """HMAC signatures, one secret per family, made when the simulator starts."""

    secrets: Mapping[str, bytes] = attrs.field(
        factory=lambda: {f: os.urandom(32) for f in ("anthropic", "gemini", "openai_responses")})

    def sign(self, family: str, text: str) -> str:
        digest = hmac.new(self.secrets[family], text.encode(), hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def valid(self, family: str, text: str, signature: Any) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self.sign(family, text), signature)


def wants_thinking(protocol: str, doc: Mapping) -> bool:
    if protocol == "anthropic":
        thinking = doc.get("thinking")
        return isinstance(thinking, Mapping) and thinking.get("type") in ("enabled", "adaptive")
    if protocol == "gemini":
        thinking = _gemini_thinking(doc)
        return thinking is not None and thinking.get("thinkingBudget", thinking.get("thinking_budget")) != 0
    if protocol == "openai_responses":
        include = doc.get("include")
        reasoning = doc.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
        return isinstance(include, list) and ENCRYPTED in include and effort != "none"
    return False


def _gemini_thinking(doc: Mapping) -> Mapping | None:
    config = doc.get("generationConfig") or doc.get("generation_config") or {}
    thinking = (config.get("thinkingConfig") or config.get("thinking_config")) if isinstance(config, Mapping) else None
    return thinking if isinstance(thinking, Mapping) else None


def check_replayed(protocol: str, doc: Mapping, signer: Signer) -> None:
    """Raise the family's 400 for reasoning it did not sign (or that was altered)."""
    if protocol == "anthropic":
        _check_anthropic(doc, signer)
    elif protocol == "gemini":
        _check_gemini(doc, signer)
    elif protocol == "openai_responses":
        _check_responses(doc, signer)


def _check_responses(doc: Mapping, signer: Signer) -> None:
    items = doc.get("input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, Mapping) or item.get("type") != "reasoning" or "encrypted_content" not in item:
            continue
        if not signer.valid("openai_responses", THOUGHT, item.get("encrypted_content")):
            raise InvalidRequest(f"The encrypted content for item {item.get('id')} could not be verified.",
                                 param=f"input[{i}].encrypted_content")


def _check_anthropic(doc: Mapping, signer: Signer) -> None:
    messages = doc.get("messages") or []
    for i, m in enumerate(messages):
        for j, block in enumerate(m.get("content") if isinstance(m.get("content"), list) else ()):
            kind = block.get("type") if isinstance(block, Mapping) else None
            if kind == "thinking" and not signer.valid("anthropic", str(block.get("thinking", "")),
                                                         block.get("signature")):
                raise InvalidRequest(f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block",
                                     param=f"messages.{i}.content.{j}")
            if kind == "redacted_thinking" and not signer.valid("anthropic", "redacted", block.get("data")):
                raise InvalidRequest(f"messages.{i}.content.{j}: Invalid `data` in `redacted_thinking` block",
                                     param=f"messages.{i}.content.{j}")
    thinking = doc.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return  # adaptive thinking may have chosen not to think
    # the open tool cycle: the last assistant turn, when a tool result answers it
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        blocks = m.get("content") if isinstance(m.get("content"), list) else []
        if m.get("role") == "assistant":
            if any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in blocks) and \
                    (not blocks or blocks[0].get("type") not in ("thinking", "redacted_thinking")):
                found = blocks[0].get("type") if blocks else "nothing"
                raise InvalidRequest(
                    f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{found}`. When `thinking` is enabled, a final `assistant` message must start with a "
                    "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).",
                    param=f"messages.{i}.content.0.type")
            return
        if m.get("role") == "user" and not any(isinstance(b, Mapping) and b.get("type") == "tool_result"
                                               for b in blocks):
            return


def _check_gemini(doc: Mapping, signer: Signer) -> None:
    for i, content in enumerate(doc.get("contents") or []):
        for j, part in enumerate(content.get("parts") or [] if isinstance(content, Mapping) else ()):
            signature = part.get("thoughtSignature") if isinstance(part, Mapping) else None
            if signature is None or signature == SKIP_SIGNATURE:
                continue
            if not signer.valid("gemini", THOUGHT, signature):
                raise InvalidRequest(f"Thought signature is not valid (contents[{i}].parts[{j}]).",
                                     param=f"contents[{i}].parts[{j}].thoughtSignature")


def with_thinking(protocol: str, doc: Mapping, result: Answer, signer: Signer) -> Answer:
    """The answer opened by a signed thought, as the family sends it: Anthropic a
    thinking block with its signature; Gemini a signature that rides on the first part
    (the first call, or the text), after its thought summary; Responses a reasoning
    item, its summary then its ``encrypted_content``."""
    if protocol not in ("anthropic", "gemini", "openai_responses"):
        return result
    signature = signer.sign(protocol, THOUGHT)
    events = list(result.events)
    at = 1 if events and isinstance(events[0], StreamStart) else 0
    parts: tuple
    if protocol == "openai_responses":
        events[at:at] = [ReasoningDelta(text=THOUGHT), ReasoningDelta(redacted=signature, issuer=protocol)]
        parts = (ReasoningPart(text=THOUGHT, redacted=signature, issuer=protocol),)
    else:
        events[at:at] = [ReasoningDelta(text=THOUGHT), ReasoningDelta(signature=signature, issuer=protocol)]
        if protocol == "anthropic":
            parts = (ReasoningPart(text=THOUGHT, signature=signature, issuer=protocol),)
        else:
            parts = (ReasoningPart(text=THOUGHT), ReasoningPart(signature=signature, issuer=protocol))
    response = attrs.evolve(result.response, parts=(*parts, *result.response.parts))
    return attrs.evolve(result, events=tuple(events), response=response)
