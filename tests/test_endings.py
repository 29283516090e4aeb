"""The ending rule, on its own: reason, provenance and charge from a request's facts.

The second half replays every shared fixture stream cut at each of its event
boundaries: a body that ends before its protocol's last event is an upstream error,
charged for what it carried, never a normal end; the whole stream is a normal end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ending import Attempt, Charge, Facts, Outcome, Trouble, decide
from gateway.meter import Forwarded, Meter
from protocols import anthropic_stream, gemini_stream, openai_chat_stream, openai_responses_stream
from protocols.stream_end import reached_terminal
from protocols.unified import EndReason, Provenance, Usage
from providers.base import SSEFramer
from providers.gemini import JsonArrayFramer

FIXTURES = Path(__file__).parent / "fixtures"
SENT = Attempt("p/m@c", Outcome.UNANSWERED)
ANSWERED = Attempt("p/m@c", Outcome.ANSWERED)
ESTIMATE = (100, Forwarded(output=7, reasoning=3))


def facts(**kw) -> Facts:
    return Facts(estimate=lambda: ESTIMATE, **kw)


# -------------------------------------------------------------- the rule itself


def test_nothing_sent_charges_nothing():
    for attempts in ((), (Attempt("a", Outcome.NOT_SENT),), (Attempt("a", Outcome.REFUSED),),
                     (Attempt("a", Outcome.NOT_SENT), Attempt("b", Outcome.REFUSED))):
        ending = decide(facts(attempts=attempts, trouble=Trouble.UPSTREAM))
        assert (ending.charge, ending.reason, ending.usage) == (Charge.NOTHING, EndReason.UPSTREAM_ERROR, None)


def test_a_gateway_failure_before_any_write_charges_nothing():
    ending = decide(facts(attempts=(Attempt("a", Outcome.NOT_SENT),), trouble=Trouble.GATEWAY))
    assert (ending.charge, ending.reason) == (Charge.NOTHING, EndReason.GATEWAY_ERROR)


def test_sent_and_never_answered_charges_the_hold_and_is_recorded():
    ending = decide(facts(attempts=(SENT,), trouble=Trouble.TIMEOUT))
    assert (ending.charge, ending.reason, ending.provenance) == (Charge.HOLD, EndReason.TIMEOUT, Provenance.ESTIMATED)
    assert ending.unanswered == ("p/m@c",)


def test_failover_after_an_unanswered_write_bills_the_answer_and_keeps_the_record():
    usage = Usage(input=10, output=5)
    ending = decide(facts(attempts=(SENT, Attempt("q/m@d", Outcome.ANSWERED)), finished=True, terminal=True,
                          usage=usage, final_usage=True))
    assert (ending.reason, ending.provenance, ending.usage) == (EndReason.END, Provenance.REPORTED, usage)
    assert ending.unanswered == ("p/m@c",)


def test_final_usage_is_reported_even_when_the_client_left_after_it():
    usage = Usage(input=10, output=5)
    ending = decide(facts(attempts=(ANSWERED,), trouble=Trouble.CLIENT_GONE, finished=True, usage=usage,
                          final_usage=True))
    assert (ending.reason, ending.provenance, ending.usage) == (EndReason.CLIENT_CANCEL, Provenance.REPORTED, usage)


def test_a_complete_answer_without_usage_charges_the_hold():
    ending = decide(facts(attempts=(ANSWERED,), finished=True, terminal=True))
    assert (ending.reason, ending.charge) == (EndReason.END, Charge.HOLD)


def test_a_cut_before_any_usage_charges_input_estimate_and_what_was_forwarded():
    ending = decide(facts(attempts=(ANSWERED,), trouble=Trouble.CLIENT_GONE))
    assert ending.charge is Charge.USAGE and ending.provenance is Provenance.ESTIMATED
    assert ending.usage == Usage(input=100, output=9, reasoning=4)  # counts lean up by a quarter
    assert "input estimated 100" in ending.basis and "output 9" in ending.basis


def test_a_cut_after_a_partial_report_keeps_reported_input_and_never_less_than_reported():
    early = Usage(input=40, cached_input=8, output=9)
    ending = decide(facts(attempts=(ANSWERED,), trouble=Trouble.TIMEOUT, usage=early))
    assert ending.provenance is Provenance.REPORTED_PARTIAL and ending.reason is EndReason.TIMEOUT
    assert ending.usage == Usage(input=40, cached_input=8, output=9, reasoning=4)


def test_an_early_report_is_not_final_usage():
    early = Usage(input=40, output=1)
    ending = decide(facts(attempts=(ANSWERED,), trouble=Trouble.UPSTREAM, finished=True, usage=early))
    assert ending.provenance is Provenance.REPORTED_PARTIAL


def test_an_unparseable_answer_is_estimated_not_free():
    ending = decide(facts(attempts=(ANSWERED,), trouble=Trouble.UPSTREAM, finished=True, terminal=True,
                          unparseable=True))
    assert ending.charge is Charge.USAGE and ending.usage.input == 100 and "answer body" in ending.basis


def test_a_stream_that_stops_short_without_trouble_is_an_upstream_error():
    ending = decide(facts(attempts=(ANSWERED,), finished=True))
    assert ending.reason is EndReason.UPSTREAM_ERROR


def test_the_estimate_is_only_computed_when_needed():
    def boom():
        raise AssertionError("estimated a charge that was known")

    usage = Usage(input=1, output=1)
    decide(Facts(attempts=(ANSWERED,), finished=True, terminal=True, usage=usage, final_usage=True, estimate=boom))
    decide(Facts(attempts=(SENT,), estimate=boom))


# -------------------------------------------------------------- every fixture, cut everywhere

DECODERS = {
    "openai-chat": (openai_chat_stream.StreamDecoder, (b"[DONE]", b'"finish_reason":"')),
    "anthropic": (anthropic_stream.StreamDecoder, (b"message_stop",)),
    "openai-responses": (openai_responses_stream.StreamDecoder,
                         (b"response.completed", b"response.incomplete", b"response.failed")),
    "gemini": (gemini_stream.StreamDecoder, (b"finishReason",)),
}
STREAMS = sorted([p for family in DECODERS for p in (FIXTURES / family).glob("stream-*")])


def _frames(path: Path, light: bool) -> tuple[object, list]:
    decoder = DECODERS[path.parent.name][0](light=light)
    framer = JsonArrayFramer(decoder) if path.suffix == ".json" else SSEFramer(decoder)
    return decoder, framer


@pytest.mark.parametrize("light", [False, True], ids=["translated", "passthrough"])
@pytest.mark.parametrize("path", STREAMS, ids=[f"{p.parent.name}/{p.name}" for p in STREAMS])
def test_every_cut_of_every_fixture_is_an_upstream_error(path, light):
    data = path.read_bytes()
    markers = DECODERS[path.parent.name][1]
    _, framer = _frames(path, light)
    boundaries = [f.raw for f in framer.feed(data) + framer.close()]
    assert boundaries
    decoder, framer = _frames(path, light)
    meter = Meter()
    saw_error = False
    sent = b""
    for k, raw in enumerate(boundaries):
        sent += raw
        for frame in framer.feed(raw) + (framer.close() if k == len(boundaries) - 1 else []):
            meter.observe(frame.events, frame.payload)
        saw_error = saw_error or meter.error is not None
        terminal = reached_terminal(decoder, body_ended=True)  # the body ends right here
        ending = decide(Facts(attempts=(ANSWERED,), trouble=Trouble.UPSTREAM if saw_error else None,
                              finished=meter.finished, terminal=terminal, usage=meter.usage,
                              final_usage=meter.final_usage, estimate=lambda: ESTIMATE))
        if terminal and not saw_error:
            # Only the protocol's own last event ends a stream normally.
            assert any(m in sent for m in markers), (path.name, k)
            assert ending.reason is EndReason.END
        else:
            assert ending.reason is EndReason.UPSTREAM_ERROR, (path.name, k)
            assert ending.charge is not Charge.NOTHING
        whole = ending
    # The whole recording: a normal end, unless the provider itself reported an error.
    assert whole.reason is (EndReason.UPSTREAM_ERROR if saw_error else EndReason.END)
    if whole.reason is EndReason.END:
        assert whole.provenance is Provenance.REPORTED
