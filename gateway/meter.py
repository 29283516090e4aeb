"""What one request's stream has shown so far, for settling it.

Usage reports are cumulative (every decoder normalises them so), so the meter keeps
the latest. When a stream ends early, the last report may predate most of the output:
the output count is then raised to what the text already forwarded implies, and the
record is marked ``reported_partial``.
"""

from __future__ import annotations

import attrs

from protocols.unified import (
    ErrorEvent,
    Finish,
    Provenance,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
    UsageReport,
)
from protocols.usage import estimate_tokens


@attrs.define
class Meter:
    usage: Usage | None = None
    finished: bool = False
    error: object = None
    output_bytes: int = 0
    opaque_frames: int = 0  # forwarded unparsed (pass-through): each carries at least a token

    def observe(self, events) -> None:
        for ev in events:
            if isinstance(ev, TextDelta):
                self.output_bytes += len(ev.text)
            elif isinstance(ev, UsageReport):
                self.usage = ev.usage
            elif isinstance(ev, ToolCallDelta):
                self.output_bytes += len(ev.arguments)
            elif isinstance(ev, ReasoningDelta):
                self.output_bytes += len(ev.text)
            elif isinstance(ev, Finish):
                self.finished = True
            elif isinstance(ev, ErrorEvent):
                self.error = ev.error

    def result(self, complete: bool) -> tuple[Usage | None, Provenance]:
        """The usage to settle with; ``complete`` means the stream ended normally.

        Every protocol sends its final usage with or after its finish event, so usage
        seen once the finish arrived is final even if the client left right after.
        """
        if self.usage is None:
            return None, Provenance.ESTIMATED
        if complete or (self.finished and self.error is None):
            return self.usage, Provenance.REPORTED
        seen = estimate_tokens(self.output_bytes) + self.opaque_frames
        usage = self.usage
        if seen > usage.output + usage.reasoning:
            usage = attrs.evolve(usage, output=seen - usage.reasoning)
        return usage, Provenance.REPORTED_PARTIAL
