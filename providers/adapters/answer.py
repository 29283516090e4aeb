"""Answer adapters: edits of what an upstream answers, on its unified form.

They run after the provider's decoder and before the client's encoder, on the events
of a stream (``edit_events``) and on a whole response (``edit_response``). The meter
reads the upstream's events before them, so an adapter never changes what is charged.
A target with one of these is never a byte-for-byte pass-through: its answers are
re-encoded from the edited events, even for a client of the same protocol.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from protocols.unified import ReasoningDelta, ReasoningPart, UnifiedResponse
from providers.adapters.request import RequestAdapter


class AnswerAdapter(RequestAdapter):
    """Identity hooks on the answer side (the request hooks stay identity too)."""

    ANSWERS: ClassVar[bool] = True

    def edit_events(self, events: tuple) -> tuple:
        return events

    def edit_response(self, response: UnifiedResponse) -> UnifiedResponse:
        return response


@attrs.frozen(kw_only=True)
class StripReasoning(AnswerAdapter):
    """The model's reasoning (thinking text, summaries, signatures) kept from the
    client: for clients that choke on reasoning blocks, or an operator who does not
    pass a vendor's thoughts on. Reasoning tokens are still metered."""

    NAME: ClassVar[str] = "strip_reasoning"

    def edit_events(self, events: tuple) -> tuple:
        return tuple(ev for ev in events if not isinstance(ev, ReasoningDelta))

    def edit_response(self, response: UnifiedResponse) -> UnifiedResponse:
        return attrs.evolve(response, parts=tuple(p for p in response.parts if not isinstance(p, ReasoningPart)))
