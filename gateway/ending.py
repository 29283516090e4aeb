"""How a request ended and what it costs: one pure decision from the request's facts.

A request's life has many ways out -- the protocol's terminal event, a client that
hangs up, a deadline, an upstream that fails, refuses or goes silent, a bug in the
gateway -- and each needs the same three answers: the end reason on its ledger entry,
where the charged numbers came from (provenance), and what to charge on what basis.
The dispatcher records facts as they happen (``Facts``); ``decide`` answers once, at
the end, so the rules live in one table instead of wherever an exception was caught.

Charging rules, in order:

1. Nothing reached an upstream (the transport wrote no byte), or every upstream that
   read the request refused it with an error answer: charge nothing.
2. No attempt answered, but one was sent and never answered (connection lost after
   the write, a time-to-first-byte deadline, the client leaving while it waited): the
   upstream may have worked for any length, so the hold is charged.
3. The answer's final usage arrived (with or after its finish): charge it, ``reported``.
4. The answer ended normally but without usage: only the hold is known (hidden
   reasoning may have been any size up to the limit the hold covers).
5. The answer was cut (client gone, stall, upstream error, truncation) or could not be
   parsed: charge what was consumed -- reported input if the upstream sent it, else the
   input estimate, plus the output and reasoning seen, each in its bucket (never less
   than a partial report) -- ``reported_partial`` when a report contributed, else
   ``estimated``; the basis is written on the entry. Counted output leans up by a
   quarter (``lean``): the gateway's tokenizer is not every provider's, and answers
   carry tokens no client sees (message and tool-call framing).
"""

from __future__ import annotations

import enum
from typing import Callable

import attrs

from gateway.meter import Forwarded
from protocols.unified import EndReason, Provenance, Usage


class Outcome(enum.Enum):
    """What one attempt came to, as far as charging is concerned."""

    NOT_SENT = "not_sent"  # the transport wrote no byte of the request
    REFUSED = "refused"  # an error answer (status or first event): no work done
    UNANSWERED = "unanswered"  # written, never answered: work unknown
    ANSWERED = "answered"  # the client's answer came from this attempt


class Trouble(enum.Enum):
    """What ended a request abnormally (the first one wins)."""

    CLIENT_GONE = "client_gone"
    TIMEOUT = "timeout"
    UPSTREAM = "upstream"
    GATEWAY = "gateway"
    CLIENT = "client"  # a client error found while building the upstream request
    SHUTDOWN = "shutdown"  # the end of a graceful stop's grace period


class Charge(enum.Enum):
    NOTHING = "nothing"
    HOLD = "hold"
    USAGE = "usage"


@attrs.frozen
class Attempt:
    label: str  # "provider/model@credential"
    outcome: Outcome
    provider: str = ""
    model: str = ""
    credential: str = ""


@attrs.frozen
class Facts:
    """Everything the ending depends on, gathered while the request ran."""

    attempts: tuple = ()  # Attempt, in order
    trouble: Trouble | None = None
    finished: bool = False  # the model's finish arrived
    terminal: bool = False  # the upstream protocol's own last event arrived (whole answers: parsed)
    usage: Usage | None = None  # the latest usage report
    final_usage: bool = False  # that report arrived with or after the finish
    unparseable: bool = False  # a 2xx answer whose body could not be read as the protocol
    # (input tokens the request costs, what the answer carried): asked for only when a
    # charge must be estimated, since counting tokens is the one costly fact
    estimate: Callable[[], tuple[int, Forwarded]] = lambda: (0, Forwarded())


@attrs.frozen
class Ending:
    reason: EndReason
    provenance: Provenance
    charge: Charge
    usage: Usage | None = None
    basis: str = ""
    unanswered: tuple = ()


_REASONS = {
    Trouble.CLIENT_GONE: EndReason.CLIENT_CANCEL,
    Trouble.TIMEOUT: EndReason.TIMEOUT,
    Trouble.UPSTREAM: EndReason.UPSTREAM_ERROR,
    Trouble.GATEWAY: EndReason.GATEWAY_ERROR,
    Trouble.CLIENT: EndReason.CLIENT_ERROR,
    Trouble.SHUTDOWN: EndReason.SHUTDOWN,
}


class Rule(enum.Enum):
    """Which of the module's five charging rules applies."""

    NOTHING = 1
    UNANSWERED_HOLD = 2
    REPORTED = 3
    NO_USAGE_HOLD = 4
    CONSUMED = 5


def rule(facts: Facts) -> Rule:
    outcomes = [a.outcome for a in facts.attempts]
    if Outcome.ANSWERED not in outcomes:
        return Rule.UNANSWERED_HOLD if Outcome.UNANSWERED in outcomes else Rule.NOTHING
    if facts.unparseable:
        return Rule.CONSUMED
    if facts.usage is not None and facts.finished and facts.final_usage:
        return Rule.REPORTED
    if facts.usage is None and facts.terminal and facts.trouble is None:
        return Rule.NO_USAGE_HOLD
    return Rule.CONSUMED


def estimates(facts: Facts) -> bool:
    """Whether ``decide`` will count tokens (callers run it off the event loop then)."""
    return rule(facts) is Rule.CONSUMED


def _reason(facts: Facts) -> EndReason:
    if facts.trouble is not None:
        return _REASONS[facts.trouble]
    answered = any(a.outcome is Outcome.ANSWERED for a in facts.attempts)
    if answered and facts.terminal:
        return EndReason.END
    return EndReason.UPSTREAM_ERROR  # an answer that stopped short of its terminal event


def _unanswered(facts: Facts) -> tuple:
    return tuple(a.label for a in facts.attempts if a.outcome is Outcome.UNANSWERED)


def hold_instead(facts: Facts) -> Ending:
    """The ending when its charge cannot be worked out (a failure while estimating):
    the hold, which covers the worst case."""
    return Ending(_reason(facts), Provenance.ESTIMATED, Charge.HOLD,
                  basis="the charge could not be estimated: the hold", unanswered=_unanswered(facts))


def decide(facts: Facts) -> Ending:
    outcomes = [a.outcome for a in facts.attempts]
    unanswered = _unanswered(facts)
    reason = _reason(facts)

    def end(provenance: Provenance, charge: Charge, usage: Usage | None = None, basis: str = "") -> Ending:
        return Ending(reason, provenance, charge, usage, basis, unanswered)

    which = rule(facts)
    if which is Rule.NOTHING:
        why = "refused by the upstream" if Outcome.REFUSED in outcomes else "nothing was sent upstream"
        return end(Provenance.ESTIMATED, Charge.NOTHING, basis=why)
    if which is Rule.UNANSWERED_HOLD:
        return end(Provenance.ESTIMATED, Charge.HOLD, basis="sent upstream and never answered: the hold")
    if which is Rule.REPORTED:
        return end(Provenance.REPORTED, Charge.USAGE, facts.usage)
    if which is Rule.NO_USAGE_HOLD:
        return end(Provenance.ESTIMATED, Charge.HOLD, basis="the answer carried no usage: the hold")
    return _consumed(facts, end)


def lean(tokens: int) -> int:
    """A counted token figure raised by a quarter, rounded up."""
    return tokens + (tokens + 3) // 4


def _consumed(facts: Facts, end) -> Ending:
    """Rule 5: what a cut (or unreadable) answer consumed, by bucket."""
    input_estimate, seen = facts.estimate()
    # an unreadable body's estimate is already a ceiling (the hold's output allowance)
    fwd = seen if facts.unparseable else Forwarded(output=lean(seen.output), reasoning=lean(seen.reasoning))
    usage = facts.usage
    if usage is not None:
        # a cost the upstream reported mid-stream covered only what it had done then
        estimate = attrs.evolve(usage, output=max(usage.output, fwd.output),
                                reasoning=max(usage.reasoning, fwd.reasoning), cost_usd=None)
        inputs = "input reported"
        provenance = Provenance.REPORTED_PARTIAL
    else:
        estimate = Usage(input=input_estimate, output=fwd.output, reasoning=fwd.reasoning)
        inputs = f"input estimated {input_estimate}"
        provenance = Provenance.ESTIMATED
    seen = "answer body" if facts.unparseable else "forwarded"
    basis = f"{inputs}; {seen}: output {fwd.output}, reasoning {fwd.reasoning} tokens"
    return end(provenance, Charge.USAGE, estimate, basis)
