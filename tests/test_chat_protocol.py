"""The Chat Completions stream decoder against recorded provider streams."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import openai_chat
from protocols.errors import UpstreamError
from protocols.sse import SSEDecoder
from protocols.unified import (
    ErrorEvent,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageReport,
)
from providers.base import SSEFramer
from tests.conftest import FIXTURES
from tests.streams import frames_in_pieces, split_at

CHAT = FIXTURES / "openai-chat"
STREAMS = sorted(CHAT.glob("*.sse"))


def decode(chunks, light: bool = False) -> list:
    sse = SSEDecoder()
    decoder = openai_chat.StreamDecoder(light=light)
    out: list = []
    for chunk in chunks:
        for ev in sse.feed(chunk):
            out.extend(decoder.feed(ev))
    for ev in sse.close():
        out.extend(decoder.feed(ev))
    return [(type(ev.error), ev.error.message) if isinstance(ev, ErrorEvent) else ev for ev in out]


def chunks_of(data: bytes) -> list[dict]:
    """The fixture's JSON chunks read naively: the oracle for text and usage."""
    return [json.loads(line[6:]) for line in data.split(b"\n")
            if line.startswith(b"data: {")]


def text_of(events) -> str:
    return "".join(ev.text for ev in events if isinstance(ev, TextDelta))


def usages(events) -> list[Usage]:
    return [ev.usage for ev in events if isinstance(ev, UsageReport)]


def errors(events) -> list[tuple]:
    return [ev for ev in events if isinstance(ev, tuple)]


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_text_matches_the_recorded_deltas(path):
    data = path.read_bytes()
    expected = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks_of(data) if c.get("choices"))
    events = decode([data])
    assert text_of(events) == expected
    assert isinstance(events[0], StreamStart) and events[0].id == chunks_of(data)[0]["id"]


def test_text_with_include_usage():
    events = decode([(CHAT / "stream-text-include-usage.sse").read_bytes()])
    [usage] = usages(events)
    final = chunks_of((CHAT / "stream-text-include-usage.sse").read_bytes())[-1]["usage"]
    assert usage.input + usage.cached_input == final["prompt_tokens"]
    assert usage.output + usage.reasoning == final["completion_tokens"]
    assert usage.total == final["total_tokens"]
    assert Finish(FinishReason.STOP) in events and not errors(events)


def test_tool_call_with_include_usage():
    data = (CHAT / "stream-tool-call-include-usage.sse").read_bytes()
    events = decode([data])
    [start] = [ev for ev in events if isinstance(ev, ToolCallStart)]
    first_call = chunks_of(data)[0]["choices"][0]["delta"]["tool_calls"][0]
    assert (start.id, start.name) == (first_call["id"], first_call["function"]["name"])
    arguments = "".join(ev.arguments for ev in events if isinstance(ev, ToolCallDelta))
    assert isinstance(json.loads(arguments), dict)
    assert Finish(FinishReason.TOOL_CALLS) in events
    [usage] = usages(events)
    assert usage.cached_input == 0 and usage.reasoning == 0 and usage.output > 0


def test_openrouter_cached_reasoning_and_cost_counted_once():
    events = decode([(CHAT / "stream-openrouter-comments-cached-reasoning.sse").read_bytes()])
    [usage] = usages(events)
    assert usage == Usage(input=687 - 679, cached_input=679, output=187 - 118, reasoning=118, cost_usd="0.00333825")
    assert usage.total == 874
    assert text_of(events).endswith(" What's on your mind?")
    assert events.count(Finish(FinishReason.STOP)) == 1


def test_comments_produce_no_events():
    data = (CHAT / "stream-openrouter-comments-cached-reasoning.sse").read_bytes()
    frames = SSEFramer(openai_chat.StreamDecoder()).feed(data)
    comments = [f for f in frames if f.raw.startswith(b":")]
    assert len(comments) == 8 and all(f.events == () for f in comments)


def test_groq_midstream_error_event():
    events = decode([(CHAT / "stream-groq-midstream-error-event.sse").read_bytes()])
    [(kind, message)] = errors(events)
    assert issubclass(kind, UpstreamError) and message.startswith("Tool call validation failed")
    assert any(isinstance(ev, ReasoningDelta) for ev in events)
    assert not any(isinstance(ev, Finish) for ev in events), "the stream ended on the error, without [DONE]"


def test_openrouter_inband_error_chunk_keeps_its_usage():
    events = decode([(CHAT / "stream-openrouter-inband-error-chunk.sse").read_bytes()])
    [(kind, message)] = errors(events)
    assert issubclass(kind, UpstreamError) and message == "Token limit reached"
    [usage] = usages(events)
    # OpenRouter reports reasoning_tokens=11 inside completion_tokens=10: reasoning is capped at
    # the completion count, so the buckets add up to the billed total (53) and nothing twice.
    assert (usage.input, usage.output, usage.reasoning) == (43, 0, 10)
    assert usage.total == 53
    assert events.count(Finish(FinishReason.LENGTH)) == 1


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_light_mode_keeps_usage_finish_and_errors(path):
    data = path.read_bytes()
    keep = (StreamStart, UsageReport, Finish, tuple)
    assert [ev for ev in decode([data], light=True) if isinstance(ev, keep)] == \
           [ev for ev in decode([data]) if isinstance(ev, keep)]


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
@pytest.mark.parametrize("light", [False, True])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0), max_size=25))
def test_any_byte_split_gives_the_same_events(path, light, cuts):
    data = path.read_bytes()
    assert decode(split_at(data, cuts), light) == decode([data], light)


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_passthrough_frames_reproduce_the_bytes(path):
    data = path.read_bytes()
    frames = frames_in_pieces(SSEFramer(openai_chat.StreamDecoder(light=True)), data, 1021)
    assert b"".join(f.raw for f in frames) == data
