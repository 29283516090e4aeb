"""What one attempt's stream has shown so far, for settling the request.

Usage reports are cumulative (every decoder normalises them so), so the meter keeps
the latest. Beside it the meter keeps what was forwarded, bucket by bucket -- visible
text and tool arguments (output) apart from reasoning -- so that a stream cut before
its final usage is charged for what it consumed, not for its whole hold.

Same-protocol streams are decoded lightly (only events that can carry usage, errors or
the finish), so most of their frames arrive here undecoded: the meter keeps their
payloads (references to bytes already read, up to ``OPAQUE_LIMIT``) and has them
decoded in full only when a partial charge needs them. Beyond the limit it falls back
to a byte estimate.
"""

from __future__ import annotations

from typing import Callable, Iterable

import attrs

from protocols.errors import GatewayError
from protocols.tokens import count_text_tokens
from protocols.unified import (
    ErrorEvent,
    Finish,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from protocols.usage import estimate_tokens

OPAQUE_LIMIT = 1 << 20  # bytes of undecoded payloads kept, and (separately) characters of decoded text


@attrs.frozen
class Forwarded:
    """Tokens the upstream produced and the gateway saw, by bucket."""

    output: int = 0
    reasoning: int = 0


@attrs.define
class Meter:
    usage: Usage | None = None
    finished: bool = False
    final_usage: bool = False  # the latest report came with or after the finish: it is final
    error: GatewayError | None = None
    error_unread: bool = False  # the error is the gateway's: it could not read what the upstream sent
    response_id: str = ""
    text: list = attrs.field(factory=list)
    reasoning: list = attrs.field(factory=list)
    opaque: list = attrs.field(factory=list)
    opaque_bytes: int = 0
    overflow_bytes: int = 0  # what was seen past the limits: estimated from its size
    kept_chars: int = 0

    def observe(self, events: Iterable, payload: bytes | None = None) -> None:
        """Take one frame's events; ``payload`` is its undecoded data when it had none."""
        seen = reported = False
        for ev in events:
            seen = True
            kind = type(ev)
            if kind is TextDelta:
                self._keep(self.text, ev.text)
            elif kind is UsageReport:
                self.usage = ev.usage
                reported = True
                self.final_usage = self.finished
            elif kind is ToolCallDelta:
                self._keep(self.text, ev.arguments)
            elif kind is ReasoningDelta:
                if ev.text:
                    self._keep(self.reasoning, ev.text)
            elif kind is Finish:
                self.finished = True
                self.final_usage = self.final_usage or reported
            elif kind is ErrorEvent:
                if self.error is None:
                    self.error = ev.error
                    self.error_unread = not ev.from_upstream
            elif kind is StreamStart:
                self.response_id = self.response_id or ev.id
        if not seen and payload:
            if self.opaque_bytes + len(payload) <= OPAQUE_LIMIT:
                self.opaque.append(payload)
                self.opaque_bytes += len(payload)
            else:
                self.overflow_bytes += len(payload)

    def _keep(self, pieces: list, text: str) -> None:
        """Keep forwarded text for counting, up to the limit; past it, only its size."""
        if self.kept_chars < OPAQUE_LIMIT:
            pieces.append(text)
            self.kept_chars += len(text)
        else:
            self.overflow_bytes += len(text)

    def forwarded(self, redecode: Callable[[list], list] | None = None) -> Forwarded:
        """What the stream carried so far, in tokens; ``redecode`` decodes kept payloads in full."""
        text, reasoning = list(self.text), list(self.reasoning)
        unread = self.overflow_bytes
        if self.opaque and redecode is not None:
            for ev in redecode(self.opaque):
                kind = type(ev)
                if kind is TextDelta:
                    text.append(ev.text)
                elif kind is ToolCallDelta:
                    text.append(ev.arguments)
                elif kind is ReasoningDelta and ev.text:
                    reasoning.append(ev.text)
        else:
            unread += self.opaque_bytes
        output = count_text_tokens(_joined(text)) + estimate_tokens(unread)
        return Forwarded(output=output, reasoning=count_text_tokens(_joined(reasoning)))


def _joined(pieces: list) -> str:
    """The text of what was seen; a decoder that let a non-string through must not
    stop a charge from being worked out."""
    return "".join(p if isinstance(p, str) else str(p) for p in pieces)
