"""The field cache: what an upstream gave that only it can read back, kept for the
next requests of the same conversation.

Reasoning is signed by the vendor that made it (Anthropic thinking ``signature`` and
``redacted_thinking`` ``data``, Gemini ``thoughtSignature``, a Responses reasoning
item's ``encrypted_content``), and a client of another
protocol cannot carry it: its protocol has no place for it, or it would hand it to the
wrong vendor. So on a translated answer the gateway takes these fields out of what
the client sees (``gateway.field_rules.Tap``) and keeps them here; when a later
request of that conversation goes to the family that made them, they are put back
where they came from (``gateway.field_rules.inject``).

Entries are scoped by the gateway key's name and the conversation (``Scope``): an entry
made for one key is never read for another. The store is a byte-capped LRU whose
entries expire ``ttl_s`` after they were written; it is a plain object, not an actor,
because every use is one synchronous step on the event loop (no await between a read
and its write), and losing it costs only a re-think, never money.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import OrderedDict
from typing import Any, Hashable, Iterable, Literal, Mapping

import attrs

from gateway.config_schema import POSITIVE, setting
from protocols.unified import TextPart, ToolResultPart, UnifiedRequest


class FieldKind(enum.Enum):
    """A field a rule keeps; each belongs to the upstream protocol that issues it."""

    ANTHROPIC_THINKING = "anthropic_thinking"  # thinking blocks with their signature, redacted thinking
    GEMINI_THOUGHT_SIGNATURE = "gemini_thought_signature"
    # Responses reasoning items with their encrypted_content (asked of the upstream with
    # ``include: ["reasoning.encrypted_content"]``)
    RESPONSES_ENCRYPTED_CONTENT = "responses_encrypted_content"
    # not kept but derived from the scope: one stable key per conversation for OpenAI's prompt cache
    PROMPT_CACHE_KEY = "prompt_cache_key"


class Mode(enum.Enum):
    """Where a kept field goes back: ``per_tool_call`` at the tool call it came with,
    ``last`` at the start of the latest answer, when the conversation's last assistant
    turn is that answer. The turn modes put back a whole answer's fields at the
    assistant turn that answer became (same text and calls): ``all`` at any such turn
    of the conversation, ``last_user_turn`` only while the request's last user turn is
    the one that answer replied to (its tool loop, a retry), ``last_assistant_turn``
    only at the request's last assistant turn."""

    LAST = "last"
    PER_TOOL_CALL = "per_tool_call"
    ALL = "all"
    LAST_USER_TURN = "last_user_turn"
    LAST_ASSISTANT_TURN = "last_assistant_turn"


TURN_MODES = (Mode.LAST_ASSISTANT_TURN, Mode.LAST_USER_TURN, Mode.ALL)


# the upstream protocols a field's rule serves
ISSUER = {FieldKind.ANTHROPIC_THINKING: ("anthropic",), FieldKind.GEMINI_THOUGHT_SIGNATURE: ("gemini",),
          FieldKind.RESPONSES_ENCRYPTED_CONTENT: ("openai_responses",),
          FieldKind.PROMPT_CACHE_KEY: ("openai_responses", "openai_chat")}
MODES_OF = {FieldKind.ANTHROPIC_THINKING: (Mode.PER_TOOL_CALL, Mode.LAST) + TURN_MODES,
            FieldKind.GEMINI_THOUGHT_SIGNATURE: (Mode.PER_TOOL_CALL, Mode.LAST) + TURN_MODES,
            FieldKind.RESPONSES_ENCRYPTED_CONTENT: (Mode.PER_TOOL_CALL, Mode.LAST) + TURN_MODES,
            FieldKind.PROMPT_CACHE_KEY: (Mode.ALL,)}
FIELD_NAMES = tuple(k.value for k in FieldKind)
MODE_NAMES = ("last", "all", "last_user_turn", "last_assistant_turn", "per_tool_call")
SESSION_HEADERS = (b"x-claude-code-session-id", b"session-id", b"session_id", b"x-session-id")


@attrs.frozen(kw_only=True)
class FieldRuleConfig:
    """One rule: a field and where it goes back."""

    field: Literal[FIELD_NAMES]
    mode: Literal[MODE_NAMES] = "per_tool_call"

    def problems(self, unread: frozenset[str]) -> Iterable[tuple[str, str]]:
        kind = FieldKind(self.field)
        if self.mode not in {m.value for m in MODES_OF[kind]}:
            yield "mode", (f"{self.field!r} is kept in modes {', '.join(repr(m.value) for m in MODES_OF[kind])}; "
                           f"{self.mode!r} is not built for it")


DEFAULT_RULES = (
    FieldRuleConfig(field="anthropic_thinking", mode="per_tool_call"),
    FieldRuleConfig(field="anthropic_thinking", mode="last"),
    FieldRuleConfig(field="gemini_thought_signature", mode="per_tool_call"),
    FieldRuleConfig(field="responses_encrypted_content", mode="per_tool_call"),
    FieldRuleConfig(field="responses_encrypted_content", mode="last"),
)


@attrs.frozen(kw_only=True)
class FieldCacheConfig:
    """``field_cache``: on by default with the built-in rules; ``max_bytes`` bounds the
    memory of all entries together, ``ttl_s`` how long one is kept after it was written."""

    enabled: bool = True
    max_bytes: int = setting(16 * 1024 * 1024, check=POSITIVE)
    ttl_s: float = setting(3600.0, check=POSITIVE)
    rules: tuple[FieldRuleConfig, ...] = DEFAULT_RULES


@attrs.frozen
class Rules:
    """The enabled rules by the upstream protocol they read, for a cheap "none" test."""

    by_protocol: Mapping[str, frozenset[tuple[FieldKind, Mode]]]

    @staticmethod
    def of(config: FieldCacheConfig) -> "Rules":
        table: dict[str, set] = {}
        if config.enabled:
            for rule in config.rules:
                kind = FieldKind(rule.field)
                for protocol in ISSUER[kind]:
                    table.setdefault(protocol, set()).add((kind, Mode(rule.mode)))
        return Rules({p: frozenset(r) for p, r in table.items()})

    def for_protocol(self, protocol: str) -> frozenset[tuple[FieldKind, Mode]]:
        return self.by_protocol.get(protocol, frozenset())

    def has(self, protocol: str, kind: FieldKind, mode: Mode) -> bool:
        return (kind, mode) in self.by_protocol.get(protocol, ())

    @property
    def keeps_responses_reasoning(self) -> bool:
        return any(kind is FieldKind.RESPONSES_ENCRYPTED_CONTENT for kind, _ in self.for_protocol("openai_responses"))

    def injects(self, upstream: str, client: str) -> bool:
        """Whether ``inject`` has work for an OpenAI upstream (Chat, Responses) of a
        client of ``client``'s protocol: a conversation key, or kept Responses reasoning
        (for a translated request: a Responses client keeps its own)."""
        return self.has(upstream, FieldKind.PROMPT_CACHE_KEY, Mode.ALL) or \
            upstream == "openai_responses" and client != upstream and self.keeps_responses_reasoning


@attrs.frozen
class Scope:
    """Whose conversation an entry belongs to."""

    key_name: str
    conversation: str


def conversation_of(req: UnifiedRequest, session: str | None) -> str:
    """The client's own session id when it sends one, else a hash of the conversation's
    start (system prompt and first turn), which every later request repeats."""
    if session:
        return "session:" + session
    first = next((m for m in req.messages if m.role != "system"), None)
    head = ["".join(p.text for p in req.system if isinstance(p, TextPart)), first.role if first else "",
            first.text() if first else ""]
    return "prefix:" + hashlib.sha256(json.dumps(head).encode()).hexdigest()[:32]


def prompt_cache_key_of(scope: Scope) -> str:
    """The conversation's ``prompt_cache_key``: stable across its requests, different
    for each key and conversation, and a hash (it names neither)."""
    digest = hashlib.sha256(json.dumps([scope.key_name, scope.conversation]).encode()).hexdigest()
    return "th-" + digest[:40]


def user_turn_of(req: UnifiedRequest) -> str:
    """The request's last user turn (a user message that is not only tool results),
    hashed with its position: what an answer replied to, and what its tool loop and
    its retries repeat."""
    for i in range(len(req.messages) - 1, -1, -1):
        m = req.messages[i]
        if m.role == "user" and not all(isinstance(p, ToolResultPart) for p in m.parts):
            return hashlib.sha256(json.dumps([i, m.text()]).encode()).hexdigest()[:32]
    return ""


def session_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """A session id from the headers agents send (Claude Code, Codex)."""
    for name, value in headers:
        if name.lower() in SESSION_HEADERS and value:
            return value.decode("latin-1")[:200]
    return None


@attrs.frozen
class _Entry:
    value: Any
    size: int
    expires_at: float


@attrs.frozen
class FieldStoreStats:
    entries: int
    bytes: int
    max_bytes: int
    evicted: int
    expired: int


class FieldStore:
    """A byte-capped LRU of entries with a time to live; ``now`` is an argument."""

    shared = False  # whether ``load`` brings in other instances' entries (``gateway.field_share``)

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._evicted = 0
        self._expired = 0

    def configure(self, config: "FieldCacheConfig") -> None:
        """A reloaded config's bounds: the cap at once, the ttl for entries written from now."""
        self.max_bytes, self.ttl_s = config.max_bytes, config.ttl_s
        self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size
            self._evicted += 1

    def put(self, key: tuple[Scope, FieldKind, Mode, str], value: Any, now: float) -> None:
        size = len(json.dumps(value, separators=(",", ":"))) + len(key[0].conversation) + len(key[3]) + 64
        self._drop(key)
        self._sweep(now)
        if size > self.max_bytes:
            return
        self._entries[key] = _Entry(value, size, now + self.ttl_s)
        self._bytes += size
        self._evict()

    def get(self, key: tuple[Scope, FieldKind, Mode, str], now: float) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            self._drop(key)
            self._expired += 1
            return None
        self._entries.move_to_end(key)
        return entry.value

    def _sweep(self, now: float) -> None:
        """Expired entries at the least recently used end leave (the rest wait for a
        read or for eviction: the byte cap bounds them either way)."""
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            self._drop(key)
            self._expired += 1

    def _drop(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size

    def statistics(self) -> FieldStoreStats:
        return FieldStoreStats(len(self._entries), self._bytes, self.max_bytes, self._evicted, self._expired)

    def holds(self, key: Hashable) -> bool:
        return key in self._entries

    async def load(self, scope: Scope, now: float) -> None:
        """Bring in what other instances kept for this conversation: nothing here, where
        this process is the only one."""


@attrs.frozen
class FieldCache:
    """The store with one generation's rules."""

    store: FieldStore
    rules: Rules

    @staticmethod
    def of(config: FieldCacheConfig, store: FieldStore | None = None) -> "FieldCache":
        return FieldCache(store or FieldStore(config.max_bytes, config.ttl_s), Rules.of(config))
