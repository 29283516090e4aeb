"""The shapes the gateway and the providers rely on in a protocol module, as
``typing.Protocol``s, so a type checker holds every protocol to the same surface.

Four protocol modules (``openai_chat``, ``openai_responses``, ``anthropic_messages``,
``gemini``) each satisfy ``ClientCodec`` as modules; their ``*_stream`` modules define a
``StreamDecoder`` (upstream bytes, as SSE events, to unified events) and a
``StreamEncoder`` (unified events to a client's bytes) that satisfy the protocols of the
same names here. ``parse_request`` is not part of ``ClientCodec``: each protocol takes
its own facts with the body (Gemini the model and the stream flag from its URL,
Anthropic whether ``max_tokens`` is required), so a route hands the dispatcher a
one-argument parser of its own (``Parse``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from protocols.errors import GatewayError
from protocols.sse import SSEEvent
from protocols.unified import Event, UnifiedRequest, UnifiedResponse

#: a route's parser: the JSON body in, the unified request out (``InvalidRequest`` if bad)
Parse = Callable[[dict], UnifiedRequest]


class StreamDecoder(Protocol):
    """An upstream's stream as unified events, one SSE event at a time. The facts it
    keeps say whether the stream reached its protocol's end (``protocols.stream_end``)."""

    def feed(self, ev: SSEEvent) -> list[Event]: ...

    @property
    def ended(self) -> bool:
        """The protocol's terminal event arrived."""
        ...

    @property
    def finished(self) -> bool:
        """The model's finish arrived."""
        ...

    @property
    def ENDS_AT_EOF_AFTER_FINISH(self) -> bool:
        """The end of the body after the finish ends the stream too."""
        ...

    @property
    def last_sequence(self) -> int:
        """The upstream's latest event number; -1 where events are not numbered."""
        ...


class StreamEncoder(Protocol):
    """Unified events as one client protocol's stream bytes, for a client of an upstream
    of another protocol (and, on pass-through, for the gateway's own error event)."""

    @property
    def content_type(self) -> str: ...

    def encode(self, events: Sequence[Event]) -> bytes: ...

    def resume(self, response_id: str, next_sequence: int) -> None:
        """Continue a stream the upstream began (its id, its next event number), so the
        gateway's own closing event follows the forwarded ones."""
        ...

    def error(self, err: GatewayError) -> bytes:
        """The protocol's error event that ends the stream."""
        ...

    def close(self) -> bytes:
        """The stream's closing events (finish, usage, terminator)."""
        ...


class ClientCodec(Protocol):
    """What the gateway calls on a client protocol's module: its name, its answer, its
    error body and its stream encoder."""

    @property
    def NAME(self) -> str: ...

    def format_response(self, resp: UnifiedResponse, model: str, *,
                        request: UnifiedRequest | None = None) -> dict: ...

    def format_error(self, err: GatewayError) -> dict: ...

    @property
    def StreamEncoder(self) -> Callable[[UnifiedRequest, str], StreamEncoder]: ...


if TYPE_CHECKING:  # each protocol module is held to the seams by the type checker
    from protocols import (
        anthropic_messages, anthropic_stream, gemini, gemini_stream, openai_chat, openai_chat_stream,
        openai_responses, openai_responses_stream,
    )

    _CODECS: tuple[ClientCodec, ...] = (openai_chat, openai_responses, anthropic_messages, gemini)
    _DECODERS: tuple[Callable[[], StreamDecoder], ...] = (
        openai_chat_stream.StreamDecoder, openai_responses_stream.StreamDecoder,
        anthropic_stream.StreamDecoder, gemini_stream.StreamDecoder,
    )
