"""The one vocabulary every wire protocol translates to and from.

Each client protocol parses into these types and each upstream protocol is built from
them, so N protocols need N translators, not N*N. Fields a protocol has and the
unified model lacks ride along in ``extra`` so a same-protocol round trip loses
nothing; a cross-protocol conversion drops what the target cannot express and says so
where it happens.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping, Union

import attrs

from protocols.errors import GatewayError


class EndReason(enum.Enum):
    """How a request ended; exactly one per usage record."""

    END = "end"
    CLIENT_CANCEL = "client_cancel"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    GATEWAY_ERROR = "gateway_error"
    CLIENT_ERROR = "client_error"  # refused after routing: the request cannot go to its upstream
    SHUTDOWN = "shutdown"  # cut by the end of a graceful stop's grace period
    RECOVERED = "recovered"


class Provenance(enum.Enum):
    """Where a usage record's numbers came from."""

    REPORTED = "reported"
    REPORTED_PARTIAL = "reported_partial"
    ESTIMATED = "estimated"


class FinishReason(enum.Enum):
    """Why the model stopped, in the unified vocabulary every protocol maps onto."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


# ---------------------------------------------------------------- content parts


@attrs.frozen
class TextPart:
    text: str
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ImagePart:
    """An image by URL or inline base64 ``data`` with its ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ToolCallPart:
    """A call the model made; ``arguments`` is the JSON text exactly as produced."""

    id: str
    name: str
    arguments: str
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ToolResultPart:
    """The caller's answer to a tool call; ``content`` is text or a tuple of parts."""

    call_id: str
    content: Union[str, tuple]
    is_error: bool = False
    name: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ReasoningPart:
    """Model reasoning: visible text and/or an opaque blob the provider wants back.

    ``signature`` is Anthropic's thinking signature or Gemini's thoughtSignature;
    ``redacted`` holds Anthropic redacted-thinking data or OpenAI encrypted_content.
    ``issuer`` is the protocol (its ``NAME``) whose upstream made them: only that
    protocol can read them back, so every builder and encoder sends them to it alone
    (``signature_for``, ``redacted_for``); None means nobody.
    """

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    issuer: str | None = None

    def signature_for(self, protocol: str) -> str | None:
        return self.signature if self.issuer == protocol else None

    def redacted_for(self, protocol: str) -> str | None:
        return self.redacted if self.issuer == protocol else None


Part = Union[TextPart, ImagePart, ToolCallPart, ToolResultPart, ReasoningPart]


@attrs.frozen
class Message:
    """One conversation turn. Roles: ``system``, ``user``, ``assistant``, ``tool``."""

    role: str
    parts: tuple
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@attrs.frozen
class Tool:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    extra: Mapping[str, Any] = attrs.field(factory=dict)


class OutputKind(enum.Enum):
    """What shape the client asked the answer's text to have."""

    JSON_OBJECT = "json_object"  # any JSON object ("JSON mode")
    JSON_SCHEMA = "json_schema"  # JSON valid for ``OutputFormat.schema``


@attrs.frozen
class OutputFormat:
    """Structured output: the answer's text is JSON (of ``schema`` when one is given)."""

    kind: OutputKind
    schema: Mapping[str, Any] = attrs.field(factory=dict)
    name: str = "response"
    strict: bool | None = None


class Effort(enum.Enum):
    """Reasoning effort in OpenAI's words; the budgets are in ``protocols.reasoning``."""

    NONE = "none"
    MINIMAL = "minimal"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    XHIGH = "xhigh"


@attrs.frozen
class Reasoning:
    """How much the client wants the model to think: an effort level, a token budget,
    or both, as the client's protocol said it (``budget`` 0: no thinking)."""

    effort: Effort | None = None
    budget: int | None = None


class ServerToolKind(enum.Enum):
    """A tool the upstream runs itself; each protocol spells each kind its own way."""

    WEB_SEARCH = "web_search"
    WEB_FETCH = "web_fetch"
    CODE_EXECUTION = "code_execution"
    OTHER = "other"


@attrs.frozen
class ServerTool:
    """A server tool as the client declared it: ``wire_type`` is its name there
    (``web_search``, ``web_search_20250305``, ``googleSearch``), ``raw`` its body."""

    kind: ServerToolKind
    wire_type: str
    raw: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class UnifiedRequest:
    """A client's call, protocol-neutral.

    ``raw`` keeps the client's parsed body so a same-protocol upstream can be sent the
    request exactly as the client wrote it (model name aside). ``protocol`` names the
    client protocol it was parsed from.
    """

    protocol: str
    model: str
    messages: tuple
    stream: bool = False
    system: tuple = ()
    tools: tuple = ()
    tool_choice: Any = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple = ()
    include_usage: bool = False
    output_format: OutputFormat | None = None
    reasoning: Reasoning | None = None
    server_tools: tuple = ()
    # set by the gateway (the field cache's ``prompt_cache_key`` rule): what an OpenAI
    # upstream is sent as ``prompt_cache_key`` when the body has none of its own
    prompt_cache_key: str | None = None
    # set by the gateway (the ``responses_encrypted_content`` rule): ask a Responses
    # upstream for its reasoning's encrypted_content, which the field cache keeps
    include_encrypted_reasoning: bool = False
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Usage:
    """Token counts in disjoint buckets: no token is in two of them.

    ``input`` excludes cache reads and writes; ``output`` excludes reasoning.
    ``cost_usd`` is a decimal string when the provider reported a cost itself.
    """

    input: int = 0
    cached_input: int = 0
    cache_write: int = 0
    output: int = 0
    reasoning: int = 0
    cost_usd: str | None = None

    @property
    def total(self) -> int:
        return self.input + self.cached_input + self.cache_write + self.output + self.reasoning

    def to_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class UnifiedResponse:
    id: str
    model: str
    parts: tuple
    finish: FinishReason = FinishReason.STOP
    usage: Usage | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)


# ---------------------------------------------------------------- stream events


@attrs.frozen
class StreamStart:
    """First event of a stream: the response id and model as the upstream named them."""

    id: str
    model: str


@attrs.frozen
class TextDelta:
    text: str


@attrs.frozen
class ReasoningDelta:
    """A piece of reasoning text, or the signature/redacted blob that closes it;
    ``issuer`` as on ``ReasoningPart`` (and ``item_id``, the Responses reasoning item
    the blob came in)."""

    text: str = ""
    signature: str | None = None
    redacted: str | None = None
    issuer: str | None = None
    item_id: str | None = None

    def signature_for(self, protocol: str) -> str | None:
        return self.signature if self.issuer == protocol else None

    def redacted_for(self, protocol: str) -> str | None:
        return self.redacted if self.issuer == protocol else None


@attrs.frozen
class ToolCallStart:
    """A new tool call; ``index`` orders parallel calls within the response."""

    index: int
    id: str
    name: str
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ToolCallDelta:
    index: int
    arguments: str


@attrs.frozen
class UsageReport:
    """Usage seen so far; every provider's stream usage is normalised to cumulative."""

    usage: Usage


@attrs.frozen
class Finish:
    reason: FinishReason


@attrs.frozen
class ErrorEvent:
    """The upstream failed after the stream began: it said so itself (an error event of
    its protocol, ``from_upstream``), or the gateway could not read what it sent."""

    error: GatewayError
    from_upstream: bool = True


Event = Union[
    StreamStart, TextDelta, ReasoningDelta, ToolCallStart, ToolCallDelta, UsageReport, Finish, ErrorEvent
]
