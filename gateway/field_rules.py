"""The field cache's two passes: take signed fields out of a translated answer
(``Tap``), and put them back into a later request for their issuer (``inject``).

Both are synchronous, run only with the cache enabled and only where they can matter:
``Tap`` on an answer whose upstream protocol differs from the client's, ``inject`` on a
request with an assistant turn to an Anthropic or Gemini upstream, or a translated
request to a Responses upstream. See ``gateway.field_cache`` for why and for the store.

What the client of a translated answer sees: its reasoning text, never another
vendor's signature (an Anthropic client gets a ``thinking`` block with an empty
signature, which the gateway recognises as foreign when it comes back).

What an upstream is sent:

- Anthropic, from an Anthropic client (its body as written): thinking blocks without a
  signature (foreign reasoning shown to the client) are dropped; an assistant turn
  left without thinking gets the blocks kept for its tool calls (``per_tool_call``) or,
  the conversation's last answer, those kept for it (``last``); if the open tool cycle
  still has no thinking, ``thinking: enabled`` is left out of the request, as Anthropic
  requires thinking there. Blocks the client kept are sent as they came.
- Anthropic, from another protocol: the client's reasoning is never sent (it cannot
  hold an Anthropic signature); kept blocks are put back the same way.
- Gemini: a function call gets back the ``thoughtSignature`` it came with.
- Responses, from another protocol: ``include: ["reasoning.encrypted_content"]`` is
  asked for (a reasoning request only), and an assistant turn gets the reasoning items
  kept for it (``per_tool_call``, ``last``, the turn modes), id and
  ``encrypted_content`` as the upstream gave them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import attrs

from gateway.field_cache import TURN_MODES, FieldCache, FieldKind, Mode, Scope, prompt_cache_key_of, user_turn_of
from protocols.unified import (
    ReasoningDelta,
    ReasoningPart,
    TextDelta,
    TextPart,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    UnifiedRequest,
    UnifiedResponse,
)

ANTHROPIC = "anthropic"
GEMINI = "gemini"
RESPONSES = "openai_responses"
# the protocols whose reasoning is kept as blocks (thinking blocks, reasoning items), by kind
BLOCK_KINDS = {ANTHROPIC: FieldKind.ANTHROPIC_THINKING, RESPONSES: FieldKind.RESPONSES_ENCRYPTED_CONTENT}


class Fingerprint:
    """An assistant turn's identity as both sides see it: its text and its calls' ids,
    hashed as they stream (nothing of an endless answer is kept)."""

    def __init__(self) -> None:
        self.text = hashlib.sha256()
        self.calls = hashlib.sha256()

    def add_text(self, text: str) -> None:
        self.text.update(text.encode())

    def add_call(self, call_id: str) -> None:
        self.calls.update(call_id.encode() + b"\0")

    def digest(self) -> str:
        return hashlib.sha256(self.text.digest() + self.calls.digest()).hexdigest()[:32]


def fingerprint(texts: Iterable[str], call_ids: Iterable[str]) -> str:
    f = Fingerprint()
    for t in texts:
        f.add_text(t)
    for c in call_ids:
        f.add_call(c)
    return f.digest()


class Tap:
    """Takes the signed fields out of one translated answer's events, and keeps those
    a rule names. Any upstream's are taken out: a client can only hand them to the
    wrong vendor. Anthropic thinking is kept as its blocks, a Responses upstream's
    reasoning as its items (id, summary, ``encrypted_content``)."""

    def __init__(self, cache: FieldCache, protocol: str, scope: Scope, now: float, user_turn: str = "") -> None:
        self.cache = cache
        self.protocol = protocol
        self.scope = scope
        self.now = now
        self.user_turn = user_turn  # ``user_turn_of`` the request this answers
        # Anthropic thinking (and Responses reasoning) is kept whole (its signature covers
        # it), up to what the store could hold: past that the answer's blocks are not kept.
        self._kind = BLOCK_KINDS.get(protocol)
        self._keeps = self._kind is not None and any(k is self._kind for k, _ in cache.rules.for_protocol(protocol))
        self._room = cache.store.max_bytes
        self._text: list[str] = []  # the reasoning block being streamed
        self._blocks: list[dict] = []  # Anthropic blocks since the last call
        self._all: list[dict] = []
        self._signatures: dict[str, str] = {}  # Gemini's, by call id
        self._text_signature: str | None = None  # Gemini's first that rode on no call (a text answer's)
        self._turn = Fingerprint()

    # ------------------------------------------------------------ streams

    def events(self, events: tuple | list) -> tuple:
        out = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                ev = self._reasoning(ev)
                if ev is None:
                    continue
            elif isinstance(ev, TextDelta):
                self._turn.add_text(ev.text)
            elif isinstance(ev, ToolCallStart):
                ev = self._call(ev.id, ev)
            out.append(ev)
        return tuple(out)

    def _reasoning(self, ev: ReasoningDelta) -> ReasoningDelta | None:
        if ev.text and self._keeps:
            self._take(len(ev.text))
            if self._keeps:
                self._text.append(ev.text)
        if ev.redacted is not None and self.protocol == RESPONSES:
            if ev.item_id:  # a reasoning item, as the upstream wants it back
                text = "".join(self._text)
                self._block({"type": "reasoning", "id": ev.item_id, "encrypted_content": ev.redacted,
                             "summary": [{"type": "summary_text", "text": text}] if text else []})
            self._text = []
        elif ev.redacted is not None:
            self._block({"type": "redacted_thinking", "data": ev.redacted})
        if ev.signature and self.protocol == GEMINI:
            if self._text_signature is None and ev.issuer == GEMINI:
                self._text_signature = ev.signature
        elif ev.signature:
            self._block({"type": "thinking", "thinking": "".join(self._text), "signature": ev.signature})
            self._text = []
        if not ev.text:
            return None  # a signature or a redacted blob only: nothing the client may read
        return attrs.evolve(ev, signature=None, redacted=None) if ev.signature or ev.redacted else ev

    def _take(self, size: int) -> None:
        self._room -= size
        if self._room < 0:  # more thinking than the store holds: keep none of this answer's
            self._keeps = False
            self._text, self._blocks, self._all = [], [], []

    def _block(self, block: dict) -> None:
        if self._keeps:
            self._take(len(block.get("signature") or block.get("data") or block.get("encrypted_content") or ""))
        if self._keeps:
            self._blocks.append(block)
            self._all.append(block)

    def _call(self, call_id: str, ev: Any) -> Any:
        self._turn.add_call(call_id)
        kind_mode = self.cache.rules
        if self._kind is not None and self._blocks and kind_mode.has(self.protocol, self._kind, Mode.PER_TOOL_CALL):
            self._put(self._kind, Mode.PER_TOOL_CALL, call_id, list(self._blocks))
        self._blocks = []
        signature = ev.extra.get("thoughtSignature") if ev.extra else None
        if signature:
            if self.protocol == GEMINI and kind_mode.has(GEMINI, FieldKind.GEMINI_THOUGHT_SIGNATURE,
                                                         Mode.PER_TOOL_CALL):
                self._put(FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.PER_TOOL_CALL, call_id, signature)
            if self.protocol == GEMINI:
                self._signatures[call_id] = signature
            ev = attrs.evolve(ev, extra={k: v for k, v in ev.extra.items() if k != "thoughtSignature"})
        return ev

    def close(self) -> None:
        """The answer ended: keep its fields for ``last`` and the turn modes."""
        rules = self.cache.rules
        if self._kind is not None and self._all and rules.has(self.protocol, self._kind, Mode.LAST):
            self._put(self._kind, Mode.LAST, "", {"turn": self._turn.digest(), "blocks": self._all})
        if self.protocol == GEMINI and self._text_signature and not self._signatures and \
                rules.has(GEMINI, FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.LAST):
            # a text answer: its signature goes back on its first part while it is the last turn
            self._put(FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.LAST, "",
                      {"turn": self._turn.digest(), "signature": self._text_signature})
        kept: tuple[FieldKind, Any] | None = None
        if self._kind is not None and self._all:
            kept = self._kind, self._all
        elif self.protocol == GEMINI and self._signatures:
            kept = FieldKind.GEMINI_THOUGHT_SIGNATURE, self._signatures
        if kept is None:
            return
        kind, value = kept
        turn = self._turn.digest()
        for mode in TURN_MODES:
            if rules.has(self.protocol, kind, mode):
                if mode is Mode.LAST_ASSISTANT_TURN:
                    self._put(kind, mode, "", {"turn": turn, "value": value})
                elif mode is Mode.LAST_USER_TURN:
                    self._put(kind, mode, self.user_turn + ":" + turn, value)
                else:
                    self._put(kind, mode, turn, value)

    def _put(self, kind: FieldKind, mode: Mode, anchor: str, value: Any) -> None:
        self.cache.store.put((self.scope, kind, mode, anchor), value, self.now)

    # ------------------------------------------------------------ whole answers

    def response(self, resp: UnifiedResponse) -> UnifiedResponse:
        """The whole-answer form of ``events``: parts in, parts without signatures out."""
        parts = []
        for p in resp.parts:
            if isinstance(p, ReasoningPart):
                item_id = p.extra.get("id") if isinstance(p.extra, dict) else None
                ev = self._reasoning(ReasoningDelta(text=p.text, signature=p.signature, redacted=p.redacted,
                                                    issuer=p.issuer, item_id=item_id if isinstance(item_id, str) else None))
                if ev is not None:
                    parts.append(attrs.evolve(p, signature=None, redacted=None))
            elif isinstance(p, TextPart):
                self._turn.add_text(p.text)
                parts.append(p)
            elif isinstance(p, ToolCallPart):
                parts.append(self._call(p.id, p))
            else:
                parts.append(p)
        self.close()
        return attrs.evolve(resp, parts=tuple(parts))


# ---------------------------------------------------------------- requests


def inject(req: UnifiedRequest, protocol: str, cache: FieldCache, scope: Scope, now: float) -> UnifiedRequest:
    """The request with the kept fields put back for an upstream of ``protocol``."""
    if protocol in (RESPONSES, "openai_chat"):
        if cache.rules.has(protocol, FieldKind.PROMPT_CACHE_KEY, Mode.ALL):
            req = with_cache_key(req, scope)
        if protocol == RESPONSES and cache.rules.keeps_responses_reasoning and req.protocol != RESPONSES:
            req = _responses(req, cache, scope, now)
        return req
    if not cache.rules.by_protocol or not any(m.role == "assistant" for m in req.messages):
        return req
    rules = cache.rules.for_protocol(protocol)
    if protocol == ANTHROPIC:  # foreign thinking leaves whatever the rules keep
        return _anthropic(req, cache, scope, now)
    if protocol == GEMINI and any(kind is FieldKind.GEMINI_THOUGHT_SIGNATURE for kind, _ in rules):
        return _gemini(req, cache, scope, now)
    return req


def _turn_kept(cache: FieldCache, scope: Scope, now: float, kind: FieldKind, protocol: str, turn: str,
               user_turn: str | None, last_turn: bool) -> Any:
    """What a turn mode kept for the assistant turn ``turn`` (its fingerprint), or None.
    ``user_turn`` is the request's last user turn when this turn follows it, else None."""
    for mode in TURN_MODES:
        if not cache.rules.has(protocol, kind, mode):
            continue
        if mode is Mode.LAST_ASSISTANT_TURN:
            entry = cache.store.get((scope, kind, mode, ""), now) if last_turn else None
            value = entry["value"] if entry and entry["turn"] == turn else None
        elif mode is Mode.LAST_USER_TURN:
            value = cache.store.get((scope, kind, mode, user_turn + ":" + turn), now) if user_turn else None
        else:
            value = cache.store.get((scope, kind, mode, turn), now)
        if value:
            return value
    return None


def with_cache_key(req: UnifiedRequest, scope: Scope) -> UnifiedRequest:
    """The request with a ``prompt_cache_key`` for an OpenAI upstream: the client's own
    (a Responses or Chat client's field, carried across those two protocols), else the
    conversation's."""
    own = req.extra.get("prompt_cache_key")
    if own is None and req.protocol == "openai_chat" and isinstance(req.raw, dict):
        own = req.raw.get("prompt_cache_key")
    key = own if isinstance(own, str) and own else prompt_cache_key_of(scope)
    return attrs.evolve(req, prompt_cache_key=key)


def _kept_blocks(cache: FieldCache, scope: Scope, now: float, call_ids: list[str], texts: list[str],
                 last_turn: bool, user_turn: str | None = None, protocol: str = ANTHROPIC) -> list[dict]:
    """The blocks (Anthropic) or reasoning items (Responses) kept for one assistant turn."""
    kind = BLOCK_KINDS[protocol]
    blocks: list[dict] = []
    for call_id in call_ids:
        blocks.extend(cache.store.get((scope, kind, Mode.PER_TOOL_CALL, call_id), now) or ())
    if not blocks and last_turn:
        last = cache.store.get((scope, kind, Mode.LAST, ""), now)
        if last and last["turn"] == fingerprint(texts, call_ids):
            blocks = list(last["blocks"])
    if not blocks:
        blocks = list(_turn_kept(cache, scope, now, kind, protocol,
                                 fingerprint(texts, call_ids), user_turn, last_turn) or ())
    return blocks


def _after_last_user(roles_only_results: list[tuple[str, bool]]) -> int:
    """The index of the last user turn (a user message not only tool results), or -1."""
    for i in range(len(roles_only_results) - 1, -1, -1):
        role, only_results = roles_only_results[i]
        if role == "user" and not only_results:
            return i
    return -1


def _anthropic(req: UnifiedRequest, cache: FieldCache, scope: Scope, now: float) -> UnifiedRequest:
    if req.protocol == ANTHROPIC:
        return attrs.evolve(req, raw=_anthropic_raw(req.raw, cache, scope, now, user_turn_of(req)))
    last = max((i for i, m in enumerate(req.messages) if m.role == "assistant"), default=-1)
    user_at, user_turn = _user_turn(req)
    messages = []
    for i, m in enumerate(req.messages):
        if m.role != "assistant":
            messages.append(m)
            continue
        parts = [p for p in m.parts if not isinstance(p, ReasoningPart)]
        ids = [p.id for p in parts if isinstance(p, ToolCallPart)]
        texts = [p.text for p in parts if isinstance(p, TextPart)]
        blocks = _kept_blocks(cache, scope, now, ids, texts, i == last, user_turn if i > user_at else None)
        kept = [ReasoningPart(redacted=b["data"], issuer=ANTHROPIC) if b["type"] == "redacted_thinking"
                else ReasoningPart(text=b["thinking"], signature=b["signature"], issuer=ANTHROPIC) for b in blocks]
        messages.append(attrs.evolve(m, parts=tuple(kept + parts)))
    return attrs.evolve(req, messages=tuple(messages))


def _responses(req: UnifiedRequest, cache: FieldCache, scope: Scope, now: float) -> UnifiedRequest:
    """A translated request for a Responses upstream: its encrypted reasoning asked for,
    and each assistant turn given the reasoning items kept for it (a client of another
    protocol has none of its own to send)."""
    req = attrs.evolve(req, include_encrypted_reasoning=True)
    if not any(m.role == "assistant" for m in req.messages):
        return req
    last = max((i for i, m in enumerate(req.messages) if m.role == "assistant"), default=-1)
    user_at, user_turn = _user_turn(req)
    messages = []
    changed = False
    for i, m in enumerate(req.messages):
        if m.role != "assistant" or any(isinstance(p, ReasoningPart) and p.redacted_for(RESPONSES) for p in m.parts):
            messages.append(m)
            continue
        ids = [p.id for p in m.parts if isinstance(p, ToolCallPart)]
        texts = [p.text for p in m.parts if isinstance(p, TextPart)]
        items = _kept_blocks(cache, scope, now, ids, texts, i == last, user_turn if i > user_at else None, RESPONSES)
        if not items:
            messages.append(m)
            continue
        kept = [ReasoningPart(text="\n\n".join(s["text"] for s in item["summary"]), redacted=item["encrypted_content"],
                              extra={"id": item["id"], "summary": item["summary"]}, issuer=RESPONSES)
                for item in items]
        others = [p for p in m.parts if not isinstance(p, ReasoningPart)]
        messages.append(attrs.evolve(m, parts=tuple(kept + others)))
        changed = True
    return attrs.evolve(req, messages=tuple(messages)) if changed else req


def _user_turn(req: UnifiedRequest) -> tuple[int, str]:
    """Where the request's last user turn is, and its ``user_turn_of``."""
    at = _after_last_user([(m.role, all(isinstance(p, ToolResultPart) for p in m.parts)) for m in req.messages])
    return at, user_turn_of(req)


def _anthropic_raw(raw: Any, cache: FieldCache, scope: Scope, now: float, user_turn: str = "") -> Any:
    turns = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(turns, list):
        return raw
    last = max((i for i, m in enumerate(turns) if isinstance(m, dict) and m.get("role") == "assistant"), default=-1)
    user_at = _after_last_user([(m.get("role", "") if isinstance(m, dict) else "", _only_results(m)) for m in turns])
    changed = False
    out = []
    for i, m in enumerate(turns):
        blocks = m.get("content") if isinstance(m, dict) and m.get("role") == "assistant" else None
        if not isinstance(blocks, list):
            out.append(m)
            continue
        signed = [b for b in blocks if not _foreign(b)]
        if not any(isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking") for b in signed):
            ids = [b.get("id", "") for b in signed if isinstance(b, dict) and b.get("type") == "tool_use"]
            texts = [b.get("text", "") for b in signed if isinstance(b, dict) and b.get("type") == "text"]
            signed = _kept_blocks(cache, scope, now, ids, texts, i == last,
                                  user_turn if i > user_at else None) + signed
        if len(signed) != len(blocks) or any(a is not b for a, b in zip(signed, blocks)):
            changed = True
            m = {**m, "content": signed}
        out.append(m)
    if not changed:
        return raw
    body = {**raw, "messages": out}
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled" and not _cycle_thinks(out):
        del body["thinking"]  # Anthropic wants the open tool cycle to open with thinking
    return body


def _only_results(turn: Any) -> bool:
    """Whether a raw Anthropic message holds tool results only (a tool loop's step)."""
    content = turn.get("content") if isinstance(turn, dict) else None
    return isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _foreign(block: Any) -> bool:
    """A thinking block the gateway showed without a signature: another vendor's."""
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")


def _cycle_thinks(turns: list) -> bool:
    """Whether the open tool cycle (the last assistant turn, answered by tool results
    at the end) opens with thinking, or there is no open cycle."""
    for m in reversed(turns):
        blocks = m.get("content") if isinstance(m, dict) and isinstance(m.get("content"), list) else []
        if m.get("role") == "assistant":
            if not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks):
                return True
            return bool(blocks) and isinstance(blocks[0], dict) and \
                blocks[0].get("type") in ("thinking", "redacted_thinking")
        if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            return True
    return True


def _gemini(req: UnifiedRequest, cache: FieldCache, scope: Scope, now: float) -> UnifiedRequest:
    messages = []
    changed = False
    kind = FieldKind.GEMINI_THOUGHT_SIGNATURE
    last = max((i for i, m in enumerate(req.messages) if m.role == "assistant"), default=-1)
    user_at, user_turn = _user_turn(req)
    for i, m in enumerate(req.messages):
        if m.role != "assistant":
            messages.append(m)
            continue
        turn = fingerprint([p.text for p in m.parts if isinstance(p, TextPart)],
                           [p.id for p in m.parts if isinstance(p, ToolCallPart)])
        calls = any(isinstance(p, ToolCallPart) for p in m.parts)
        by_turn = _turn_kept(cache, scope, now, kind, GEMINI, turn, user_turn if i > user_at else None, i == last) \
            if calls else None
        parts = []
        if i == last and not calls and cache.rules.has(GEMINI, kind, Mode.LAST):
            kept = cache.store.get((scope, kind, Mode.LAST, ""), now)
            if kept and kept["turn"] == turn and not any(isinstance(p, ReasoningPart) and p.signature_for(GEMINI)
                                                         for p in m.parts):
                parts.append(ReasoningPart(signature=kept["signature"], issuer=GEMINI))  # rides on the next part
                changed = True
        for p in m.parts:
            if isinstance(p, ToolCallPart) and not p.extra.get("thoughtSignature"):
                signature = cache.store.get((scope, kind, Mode.PER_TOOL_CALL, p.id), now) \
                    if cache.rules.has(GEMINI, kind, Mode.PER_TOOL_CALL) else None
                signature = signature or (by_turn or {}).get(p.id)
                if signature:
                    p = attrs.evolve(p, extra={**p.extra, "thoughtSignature": signature})
                    changed = True
            parts.append(p)
        messages.append(attrs.evolve(m, parts=tuple(parts)) if changed else m)
    return attrs.evolve(req, messages=tuple(messages)) if changed else req
