"""One request as the dispatcher carries it: the call, the client's side, its facts.

``Request`` records facts as they happen -- attempts and what each came to, the first
trouble, the meter of the answering attempt -- and never decides anything from them:
``gateway.ending.decide`` does, once, at the end.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs
import trio

from gateway.disconnect import Disconnect
from gateway.ending import Attempt, Ending, Facts, Outcome, Trouble
from gateway.meter import Forwarded, Meter
from gateway.observe import Transport
from gateway.tracing import NO_TRACE, RequestTrace
from protocols.seams import ClientCodec
from protocols.tokens import estimate_request_tokens
from protocols.unified import UnifiedRequest
from protocols.usage import estimate_tokens


class ClientLink(Protocol):
    """The client's side of one HTTP exchange, as the dispatcher sees it."""

    async def start(self, status: int, headers: list) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, data: bytes = b"") -> None: ...
    async def wait_disconnect(self) -> None: ...  # for a link whose ``disconnect`` is None

    @property
    def disconnect(self) -> Disconnect | None:
        """The server's hook that says the client left (``gateway.disconnect``), or None:
        then the dispatcher waits in ``wait_disconnect``."""
        ...

    @property
    def ended(self) -> bool: ...


class Recorder(Protocol):
    """Keeps the answer a client saw (a Responses client's response object), once it is
    settled and before the client has its last byte: a later request that names it
    finds it."""

    def record(self, req: "Request", response: dict) -> None: ...


@attrs.frozen
class Call:
    """One parsed client request, ready to dispatch."""

    request: UnifiedRequest
    key: str
    client: ClientCodec  # the client protocol's module
    body_bytes: int
    request_id: str
    recorder: Recorder | None = None
    transport: Transport = Transport.HTTP
    trace: RequestTrace = NO_TRACE  # its span, when traces are on (``gateway.tracing``)
    received: Any = None  # the client's body as parsed (a transform trace's first pass)
    trace_asked: bool = False  # the client asked for a transform trace (``gateway.transform_trace``)
    session: str | None = None  # the client's session id header, for the field cache


@attrs.define
class Request:
    """Facts about one request, shared by its attempts and its disconnect watcher."""

    call: Call
    attempts: list = attrs.field(factory=list)  # Attempt, in order
    trouble: Trouble | None = None
    meter: Meter = attrs.field(factory=Meter)
    started: bool = False  # the client's response began
    client_gone: bool = False
    terminal: bool = False  # the answer reached the upstream protocol's last event
    unparseable_bytes: int | None = None
    redecode: Callable[[list], list] | None = None
    streaming_scope: trio.CancelScope | None = None
    drain_deadline: float | None = None  # set while a stream is drained for its usage
    settled: bool = False
    hold_unwritten: bool = False  # its reservation is not on disk yet (``Dispatcher._persist``)
    unbooked: Any = None  # the meter's refusal of a request it could not book whole: its answer is withheld
    output_allowance: int = 0  # the output tokens its hold covers
    field_scope: Any = None  # the field cache's conversation scope, once worked out (gateway.attempt)
    created_at: float = attrs.field(factory=trio.current_time)
    first_byte_at: float | None = None  # when the client's answer began
    key_name: str | None = None  # once the reservation authenticated the key
    ending: Ending | None = None  # what the settlement said
    charged: Any = None  # the meter's answer to it (``actors.usage.Settled``)
    transform: Any = None  # its transform trace (``gateway.transform_trace.Trace``) when it is traced

    @property
    def id(self) -> str:
        return self.call.request_id

    def note(self, trouble: Trouble) -> None:
        """Record what went wrong; the first trouble is the one that ended the request."""
        if self.trouble is None:
            self.trouble = trouble

    def begin_attempt(self, target: Any, credential: str) -> int:
        """A new attempt, in flight: until it says otherwise it may have reached the upstream."""
        self.attempts.append(Attempt(f"{target.label}@{credential}", Outcome.UNANSWERED,
                                     target.provider, target.model, credential))
        return len(self.attempts) - 1

    def billed_attempt(self) -> Attempt | None:
        """The attempt a charge belongs to: the one that answered, else the last one that
        may have reached an upstream, else the last one."""
        for wanted in (Outcome.ANSWERED, Outcome.UNANSWERED):
            for attempt in reversed(self.attempts):
                if attempt.outcome is wanted:
                    return attempt
        return self.attempts[-1] if self.attempts else None

    def settle_attempt(self, index: int, outcome: Outcome) -> None:
        self.attempts[index] = attrs.evolve(self.attempts[index], outcome=outcome)

    def facts(self) -> Facts:
        meter = self.meter
        return Facts(attempts=tuple(self.attempts), trouble=self.trouble, finished=meter.finished,
                     terminal=self.terminal, usage=meter.usage, final_usage=meter.final_usage,
                     unparseable=self.unparseable_bytes is not None, estimate=self._estimate)

    def _estimate(self) -> tuple[int, Forwarded]:
        """The input the request costs and what its answer carried, in tokens (only
        computed when a charge must be estimated)."""
        tokens = estimate_request_tokens(self.call.request)
        if self.unparseable_bytes is not None:
            # an unreadable body says little; no more than the limit the hold covers
            return tokens, Forwarded(output=min(estimate_tokens(self.unparseable_bytes), self.output_allowance))
        return tokens, self.meter.forwarded(self.redecode)
