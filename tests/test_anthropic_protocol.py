"""Anthropic Messages codecs against recorded streams, captured requests and properties."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import anthropic_messages as am
from protocols import openai_chat, tokens
from protocols.errors import (
    GatewayError,
    InvalidRequest,
    NoCapacity,
    OutOfCredit,
    PayloadTooLarge,
    Unauthenticated,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
    classify_upstream,
)
from protocols.sse import SSEDecoder
from protocols.unified import (
    ErrorEvent,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    ReasoningPart,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    UnifiedRequest,
    Usage,
    UsageReport,
)
from providers.base import SSEFramer
from tests.conftest import FIXTURES

STREAMS = sorted((FIXTURES / "anthropic").glob("*.sse"))
REQUESTS = sorted((FIXTURES / "requests").glob("claude-code-*")) + sorted((FIXTURES / "requests").glob("py-anthropic-*"))


def frames_of(data: bytes, cuts=(), light: bool = False):
    framer = SSEFramer(am.StreamDecoder(light=light))
    frames, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        frames += framer.feed(data[last:cut])
        last = cut
    return frames + framer.close()


def events_of(data: bytes, cuts=(), light: bool = False) -> list:
    return [ev for frame in frames_of(data, cuts, light) for ev in frame.events]


def summary(events: list) -> dict:
    """What a consumer of the unified events would build from them."""
    tools: dict = {}
    for ev in events:
        if isinstance(ev, ToolCallStart):
            tools[ev.index] = [ev.id, ev.name, ""]
        elif isinstance(ev, ToolCallDelta):
            tools[ev.index][2] += ev.arguments
    usages = [ev.usage for ev in events if isinstance(ev, UsageReport)]
    return {
        "start": [ev for ev in events if isinstance(ev, StreamStart)],
        "text": "".join(ev.text for ev in events if isinstance(ev, TextDelta)),
        "thinking": "".join(ev.text for ev in events if isinstance(ev, ReasoningDelta)),
        "signatures": [ev.signature for ev in events if isinstance(ev, ReasoningDelta) and ev.signature],
        "tools": [tuple(tools[i]) for i in sorted(tools)],
        "usage": usages[-1] if usages else None,
        "finish": [ev.reason for ev in events if isinstance(ev, Finish)],
        "errors": [ev.error for ev in events if isinstance(ev, ErrorEvent)],
    }


def load(name: str) -> bytes:
    return (FIXTURES / "anthropic" / name).read_bytes()


# ---------------------------------------------------------------- recorded streams


def test_text_stream_with_ping_and_padding():
    s = summary(events_of(load("stream-text-ping-padding.sse")))
    assert s["start"] == [StreamStart("msg_017A4s3HAsrqf5d2WvBmrpLr", "claude-sonnet-4-5-20250929")]
    assert s["text"] == "- Captain\n- Scoop"
    assert s["usage"] == Usage(input=17, output=10)
    assert s["finish"] == [FinishReason.STOP]
    assert not s["errors"]


def test_parallel_tool_calls_with_empty_input_get_empty_objects():
    s = summary(events_of(load("stream-parallel-tool-use-empty-input.sse")))
    assert s["tools"] == [
        ("toolu_01LtHJmixrs9NcWQkK8hu8hj", "pelican_name_generator", "{}"),
        ("toolu_01N8a4jWyf116qKTMqKKmjyt", "pelican_name_generator", "{}"),
    ]
    assert s["finish"] == [FinishReason.TOOL_CALLS]
    assert s["usage"] == Usage(input=542, output=62)


def test_tool_input_json_deltas_concatenate():
    s = summary(events_of(load("stream-tool-use-input-json-delta.sse")))
    assert s["text"] == "I'll check the current weather in Paris for you."
    [(call_id, name, args)] = s["tools"]
    assert (call_id, name) == ("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather")
    assert json.loads(args) == {"location": "Paris"}
    # message_delta carried only output_tokens: the input from message_start is kept.
    assert s["usage"] == Usage(input=377, output=65)


def test_thinking_and_signature():
    s = summary(events_of(load("stream-thinking-signature-delta.sse")))
    assert s["thinking"].startswith("The user wants two names for a pet pelican, and wants me to be brief.")
    assert len(s["signatures"]) == 1 and len(s["signatures"][0]) > 100
    assert s["text"] == "- Captain\n- Scoop"
    assert s["usage"] == Usage(input=46, output=84)


def test_cache_read_with_compaction_iterations_counts_each_token_once():
    events = events_of(load("stream-cache-read-compaction-iterations.sse"))
    reports = [ev.usage for ev in events if isinstance(ev, UsageReport)]
    assert reports[0] == Usage(input=100, cached_input=55096, output=7)
    # The bill is the sum over iterations: compaction (100 in, 55096 cached, 83 out)
    # plus the answer (181 in, 8 out). Neither report is added to the other.
    assert reports[-1] == Usage(input=281, cached_input=55096, cache_write=0, output=91)
    assert summary(events)["text"] == "Hello! 👋"


def test_cumulative_message_delta_usage_is_taken_not_summed():
    data = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m",'
        b'"usage":{"input_tokens":10,"cache_creation_input_tokens":300,"cache_read_input_tokens":2000,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":10,"cache_creation_input_tokens":300,"cache_read_input_tokens":2000,"output_tokens":40}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    s = summary(events_of(data))
    assert s["usage"] == Usage(input=10, cached_input=2000, cache_write=300, output=40)
    assert s["usage"].total == 2350
    assert s["finish"] == [FinishReason.STOP]


def test_web_search_stream_with_large_frames():
    s = summary(events_of(load("stream-web-search-large-frames.sse")))
    assert s["tools"] == []  # server tool use is Anthropic's own business
    assert s["usage"] == Usage(input=31772, output=644)
    assert s["text"].startswith("Let me search for more specific breaking news")


def test_midstream_overloaded_error_becomes_error_event():
    s = summary(events_of(load("stream-error-overloaded-midstream.sse")))
    assert s["text"] == "- Captain"
    [err] = s["errors"]
    assert isinstance(err, UpstreamOverloaded) and err.status == 529
    assert am.format_error(err)["error"]["type"] == "overloaded_error"
    assert s["finish"] == []


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_passthrough_frames_reproduce_the_bytes(path):
    data = path.read_bytes()
    assert b"".join(frame.raw for frame in frames_of(data, light=True)) == data


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
def test_light_mode_keeps_usage_finish_and_errors(path):
    data = path.read_bytes()
    full, light = summary(events_of(data)), summary(events_of(data, light=True))
    for key in ("start", "usage", "finish", "errors"):
        assert repr(full[key]) == repr(light[key])


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_split_gives_the_same_events(path, data):
    raw = path.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    expected = frames_of(raw)
    got = frames_of(raw, cuts)
    assert [f.raw for f in got] == [f.raw for f in expected]
    assert repr([f.events for f in got]) == repr([f.events for f in expected])


# ---------------------------------------------------------------- requests


def request_body(path) -> dict:
    return json.loads(path.read_text())["body"]


@pytest.mark.parametrize("path", [p for p in REQUESTS if "_POST_v1_messages.json" in p.name], ids=lambda p: p.name)
def test_captured_requests_parse_and_pass_through(path):
    body = request_body(path)
    req = am.parse_request(body)
    assert req.protocol == "anthropic" and req.model == body["model"]
    out = am.build_request(req, "claude-upstream")
    assert out == {**body, "model": "claude-upstream"}
    assert body["model"] != "claude-upstream"  # the client's body itself is untouched


def test_claude_code_second_turn():
    req = am.parse_request(request_body(FIXTURES / "requests" / "claude-code-2.1.331__print-tool-roundtrip__02_POST_v1_messages.json"))
    roles = [m.role for m in req.messages]
    assert roles == ["user", "system", "assistant", "tool"]
    [call] = req.messages[2].parts
    assert isinstance(call, ToolCallPart) and call.name == "Bash" and json.loads(call.arguments)
    [result] = req.messages[3].parts
    assert result.call_id == call.id and result.extra["cache_control"] == {"type": "ephemeral"}
    assert req.system[1].extra == {"cache_control": {"type": "ephemeral"}}
    assert req.max_tokens == 128000 and req.stream
    assert req.extra["thinking"] == {"type": "adaptive", "display": "omitted"}
    assert len(req.tools) == 12 and req.tools[10].extra == {"defer_loading": True}


def test_parse_blocks_tools_and_choices():
    req = am.parse_request({
        "model": "m", "max_tokens": 100, "stream": True, "temperature": 0.5, "top_p": 0.9,
        "stop_sequences": ["END"], "metadata": {"user_id": "u"},
        "system": "be brief",
        "tools": [{"name": "get_weather", "description": "w", "input_schema": {"type": "object"}},
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        "tool_choice": {"type": "any"},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                 "content": [{"type": "text", "text": "boom"}]},
                {"type": "text", "text": "and now?"}]},
        ],
    })
    assert req.system == (TextPart("be brief"),)
    assert req.tools == (Tool("get_weather", "w", {"type": "object"}),)
    assert [(t.kind.value, t.wire_type) for t in req.server_tools] == [("web_search", "web_search_20250305")]
    assert req.extra["metadata"] == {"user_id": "u"}
    assert req.tool_choice == "required" and req.stop == ("END",) and req.stream
    user, assistant, tool, follow_up = req.messages
    assert user.parts == (TextPart("look", {"cache_control": {"type": "ephemeral"}}),
                          ImagePart(data="AAAA", media_type="image/png"), ImagePart(url="https://x/y.png"))
    assert assistant.parts == (ReasoningPart("hmm", "sig", issuer="anthropic"),
                               ReasoningPart(redacted="opaque", issuer="anthropic"),
                               ToolCallPart("t1", "get_weather", '{"city": "Paris"}'))
    assert tool == Message("tool", (ToolResultPart("t1", (TextPart("boom"),), is_error=True),))
    assert follow_up == Message("user", (TextPart("and now?"),))
    hi = [{"role": "user", "content": "hi"}]
    assert am.parse_request({"model": "m", "max_tokens": 1, "messages": hi,
                             "tool_choice": {"type": "tool", "name": "x"}}).tool_choice == {"name": "x"}


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("doc, param", [
    ({"messages": HI, "max_tokens": 1}, "model"),
    ({"model": "m", "messages": HI}, "max_tokens"),
    ({"model": "m", "max_tokens": "10", "messages": HI}, "max_tokens"),
    ({"model": "m", "max_tokens": 1, "messages": []}, "messages"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "bot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": "m", "max_tokens": 1, "messages": HI, "system": 3}, "system"),
    ({"model": "m", "max_tokens": 1, "messages": HI, "system": [{"type": "image"}]}, "system[0]"),
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_use", "name": "x"}]}]},
     "messages[0].content[0].id"),
    ({"model": "m", "max_tokens": 1, "messages": HI, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({"model": "m", "max_tokens": 1, "messages": HI, "tools": [{"description": "no name"}]}, "tools[0].name"),
])
def test_invalid_requests_name_the_field(doc, param):
    with pytest.raises(InvalidRequest) as info:
        am.parse_request(doc)
    assert info.value.param == param and info.value.status == 400


def chat_request(**changes) -> UnifiedRequest:
    doc = {
        "model": "gpt", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "reasoning_content": "thinking without a signature",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"P"}'}},
                            {"id": "c2", "type": "function", "function": {"name": "w", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c2", "content": "rainy"},
            {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}]},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "temperature": 1.7, "stop": "END", "stream": True,
    }
    doc.update(changes)
    return openai_chat.parse_request(doc)


def test_build_from_another_protocol():
    body = am.build_request(chat_request(), "claude")
    assert body["model"] == "claude" and body["max_tokens"] == am.DEFAULT_MAX_TOKENS
    assert body["system"] == "sys"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "c1", "name": "w", "input": {"city": "P"}},
            {"type": "tool_use", "id": "c2", "name": "w", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "c2", "content": "rainy"},
            {"type": "text", "text": "thanks"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"}}]},
    ]
    assert body["tools"] == [{"name": "w", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["END"] and body["stream"] is True
    assert am.build_request(chat_request(max_tokens=77, stream=False), "c")["max_tokens"] == 77
    assert "stream" not in am.build_request(chat_request(stream=False), "c")


def test_round_trip_through_unified_keeps_the_conversation():
    original = {
        "model": "m", "max_tokens": 50, "system": "sys",
        "tools": [{"name": "w", "description": "d", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "tool", "name": "w"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "redacted_thinking", "data": "r"},
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "w", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok", "is_error": True}]},
        ],
    }
    req = am.parse_request(original)
    rebuilt = am.build_request(UnifiedRequest(**{**{f: getattr(req, f) for f in (
        "model", "messages", "stream", "system", "tools", "tool_choice", "max_tokens", "stop")}, "protocol": "other"}), "m")
    assert rebuilt == original


# ---------------------------------------------------------------- responses and errors


def test_nonstream_response_parses_and_formats():
    doc = json.loads(load("message-nonstream.json"))
    resp = am.parse_response(doc)
    assert resp.parts == (TextPart(doc["content"][0]["text"]),)
    assert resp.finish is FinishReason.STOP and resp.usage == Usage(input=12, output=29)
    out = am.format_response(resp, "my-model")
    assert out["id"] == doc["id"] and out["model"] == "my-model" and out["type"] == "message"
    assert out["content"] == doc["content"] and out["stop_reason"] == "end_turn"
    assert out["usage"] == {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                            "output_tokens": 29}


def test_format_response_blocks_stop_reasons_and_usage():
    chat = openai_chat.parse_response({"id": "chatcmpl-1", "model": "g", "choices": [{"finish_reason": "tool_calls", "message": {
        "content": "ok", "reasoning_content": "why", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 30, "prompt_tokens_details": {"cached_tokens": 60},
                  "completion_tokens_details": {"reasoning_tokens": 10}}})
    out = am.format_response(chat, "m")
    assert out["id"].startswith("msg_") and out["stop_reason"] == "tool_use"
    assert [b["type"] for b in out["content"]] == ["thinking", "text", "tool_use"]
    assert out["content"][2]["input"] == {"x": 1}
    assert out["usage"] == {"input_tokens": 40, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0,
                            "output_tokens": 30}
    stops = {"max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "refusal": "refusal", "end_turn": "end_turn"}
    for wire, expected in stops.items():
        doc = {"id": "msg_x", "content": [], "stop_reason": wire, "stop_sequence": "END" if wire == "stop_sequence" else None}
        assert am.format_response(am.parse_response(doc), "m")["stop_reason"] == expected


@pytest.mark.parametrize("err, kind", [
    (InvalidRequest("x"), "invalid_request_error"),
    (Unauthenticated("x"), "authentication_error"),
    (OutOfCredit("x"), "billing_error"),
    (PayloadTooLarge("x"), "request_too_large"),
    (UpstreamRateLimited("x"), "rate_limit_error"),
    (UpstreamOverloaded("x", status=529), "overloaded_error"),
    (UpstreamOverloaded("x"), "overloaded_error"),
    (NoCapacity("x"), "overloaded_error"),
    (NoCapacity("x", status=429), "rate_limit_error"),
    (UpstreamTimeout("x"), "timeout_error"),
    (GatewayError("x"), "api_error"),
])
def test_error_shape(err, kind):
    assert am.format_error(err) == {"type": "error", "error": {"type": kind, "message": "x"}}


def test_recorded_error_bodies_classify_and_render_back():
    body = load("error-529-overloaded.json")
    err = classify_upstream(529, body, {}, None)
    assert isinstance(err, UpstreamOverloaded) and err.status == 529
    assert json.dumps(am.format_error(err), separators=(",", ":")).encode() == body
    err = classify_upstream(429, load("error-429-rate-limit.json"), {}, None)
    assert isinstance(err, UpstreamRateLimited) and am.format_error(err)["error"]["type"] == "rate_limit_error"


def test_count_tokens():
    doc = request_body(FIXTURES / "requests" / "py-anthropic-2.13.0__sdk__05_POST_v1_messages_count_tokens.json")
    one_turn = tokens.MESSAGE_OVERHEAD + tokens.REPLY_OVERHEAD
    assert am.count_tokens(doc) == {"input_tokens": tokens.count_text_tokens("say hi") + one_turn}
    prose = "The quick brown fox jumps over the lazy dog. " * 100
    big = {**doc, "system": prose}
    assert am.count_tokens(big)["input_tokens"] >= tokens.count_text_tokens(prose) + one_turn
    with pytest.raises(InvalidRequest):
        am.count_tokens({"model": "m"})


# ---------------------------------------------------------------- encoder


def reencode(events: list, model: str = "client-model") -> bytes:
    enc = am.StreamEncoder(am.parse_request({"model": model, "max_tokens": 5, "messages": HI}), model)
    return enc.encode(events) + enc.close()


@pytest.mark.parametrize("path", [p for p in STREAMS if "error" not in p.name], ids=lambda p: p.name)
def test_encoder_round_trip(path):
    events = events_of(path.read_bytes())
    wire = reencode(events)
    again = summary(events_of(wire))
    before = summary(events)
    assert again["start"][0].model == "client-model" and again["start"][0].id == before["start"][0].id
    for key in ("text", "thinking", "signatures", "tools", "usage", "finish"):
        assert again[key] == before[key], key
    sse = SSEDecoder().feed(wire)
    names = [ev.event for ev in sse]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [json.loads(ev.data)["index"] for ev in sse if ev.event == "content_block_start"]
    stops = [json.loads(ev.data)["index"] for ev in sse if ev.event == "content_block_stop"]
    assert starts == stops == list(range(len(starts)))


def test_encoder_from_chat_events_holds_usage_until_close():
    enc = am.StreamEncoder(chat_request(), "c")
    head = enc.encode([StreamStart("chatcmpl-9", "g"), TextDelta("Hi"), ToolCallStart(0, "call_1", "w"),
                       ToolCallDelta(0, '{"a"'), ToolCallDelta(0, ":1}"), Finish(FinishReason.TOOL_CALLS)])
    tail = enc.encode([UsageReport(Usage(input=5, cached_input=2, output=3, reasoning=1))]) + enc.close()
    assert b"message_delta" not in head
    events = [json.loads(ev.data) for ev in SSEDecoder().feed(head + tail)]
    assert events[0]["message"]["id"] == "msg_chatcmpl-9"
    delta = events[-2]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2,
                              "output_tokens": 4}


def test_encoder_error_ends_the_stream():
    enc = am.StreamEncoder(chat_request(), "c")
    head = enc.encode([StreamStart("x", "g"), TextDelta("partial")])
    err = enc.error(UpstreamOverloaded("Overloaded", status=529))
    assert err == b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    assert enc.encode([TextDelta("late")]) == b"" and enc.close() == b""
    assert b"content_block_delta" in head
    in_band = am.StreamEncoder(chat_request(), "c")
    assert in_band.encode([ErrorEvent(UpstreamTimeout("slow"))]).startswith(b"event: error\n")
    assert in_band.close() == b""
