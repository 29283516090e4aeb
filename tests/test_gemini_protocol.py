"""The Gemini codecs against recorded streams, captured client requests and properties."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import gemini, openai_chat, tokens
from protocols.errors import (InvalidRequest, RequestTimeout, UpstreamRateLimited, UpstreamServerError,
                              UpstreamTimeout, classify_upstream)
from protocols.gemini_wire import GENERATED_ID_PREFIX, SKIP_SIGNATURE
from protocols.json_array import JsonArraySplitter
from protocols.retry_after import gemini_retry_delay, retry_after
from protocols.unified import (
    ErrorEvent,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningPart,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    ToolResultPart,
    Usage,
    UsageReport,
)
from providers.base import SSEFramer
from providers.gemini import JsonArrayFramer
from tests.conftest import FIXTURES

GEMINI = FIXTURES / "gemini"
REQUESTS = FIXTURES / "requests"
SSE_FIXTURES = ["stream-sse-function-call-thought-signature.sse", "stream-sse-thoughts-token-count.sse"]
ARRAY_FIXTURE = "stream-json-array-no-alt-sse.json"


def framer_for(name: str, light: bool = False):
    decoder = gemini.StreamDecoder(light=light)
    return JsonArrayFramer(decoder) if name.endswith(".json") else SSEFramer(decoder)


def decode(name: str, pieces: list[bytes], light: bool = False) -> tuple[list, bytes]:
    framer = framer_for(name, light)
    frames = [f for piece in pieces for f in framer.feed(piece)] + framer.close()
    return [ev for f in frames for ev in f.events], b"".join(f.raw for f in frames)


def whole(name: str) -> bytes:
    return (GEMINI / name).read_bytes()


def last_usage(events: list) -> Usage:
    return [ev.usage for ev in events if isinstance(ev, UsageReport)][-1]


# ---------------------------------------------------------------- recorded streams


def test_function_call_with_thought_signature():
    events, _ = decode(SSE_FIXTURES[0], [whole(SSE_FIXTURES[0])])
    assert events[0] == StreamStart("QUVVadTSNJ6_qtsPvN7J8Q0", "gemini-3-pro-preview")
    start = next(ev for ev in events if isinstance(ev, ToolCallStart))
    assert start.name == "get_country" and start.index == 0
    assert start.id.startswith(GENERATED_ID_PREFIX)
    assert start.extra["thoughtSignature"].startswith("EpwICpkIAXLI2nx")
    assert [ev.arguments for ev in events if isinstance(ev, ToolCallDelta)] == ["{}"]
    assert last_usage(events) == Usage(input=29, output=10, reasoning=202)
    assert last_usage(events).total == 241  # totalTokenCount: nothing counted twice
    assert [ev for ev in events if isinstance(ev, Finish)] == [Finish(FinishReason.TOOL_CALLS)]


def test_cumulative_usage_last_report_wins():
    events, _ = decode(SSE_FIXTURES[1], [whole(SSE_FIXTURES[1])])
    text = "".join(ev.text for ev in events if isinstance(ev, TextDelta))
    assert text == "\n".join(str(i) for i in range(1, 31))
    reports = [ev.usage for ev in events if isinstance(ev, UsageReport)]
    assert [u.output for u in reports] == [31, 79, 80]
    assert reports[-1] == Usage(input=18, output=80, reasoning=35)
    assert reports[-1].total == 133
    assert events[-1] == Finish(FinishReason.STOP)


def test_json_array_stream_with_thoughts_and_signature():
    events, _ = decode(ARRAY_FIXTURE, [whole(ARRAY_FIXTURE)])
    reasoning = [ev for ev in events if isinstance(ev, ReasoningDelta)]
    assert reasoning[0].text.startswith("**Considering the Constraint**")
    assert reasoning[-1].text == "" and reasoning[-1].signature.startswith("Eq0JCqoJARFNMg")
    assert "".join(ev.text for ev in events if isinstance(ev, TextDelta)) == "Scoop"
    assert last_usage(events) == Usage(input=11, output=2, reasoning=291)
    assert last_usage(events).total == 304
    assert events[-1] == Finish(FinishReason.STOP)


@pytest.mark.parametrize("name", SSE_FIXTURES + [ARRAY_FIXTURE])
def test_passthrough_frames_reproduce_the_bytes(name):
    for light in (False, True):
        events, raw = decode(name, [whole(name)], light)
        assert raw == whole(name)
        full, _ = decode(name, [whole(name)])
        assert last_usage(events) == last_usage(full)
        assert [ev for ev in events if isinstance(ev, Finish)] == [ev for ev in full if isinstance(ev, Finish)]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("name", SSE_FIXTURES + [ARRAY_FIXTURE])
def test_any_byte_split_gives_the_same_events(name, data):
    body = whole(name)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=20)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    events, raw = decode(name, pieces)
    assert raw == body
    assert events == decode(name, [body])[0]


def test_non_stream_responses():
    resp = gemini.parse_response(json.loads(whole("generate-content-nonstream.json")))
    assert isinstance(resp.parts[0], ReasoningPart) and resp.parts[0].signature.startswith("EtoFCtcF")
    assert resp.parts[1].text.startswith("There are **3** r's in strawberry.")
    assert resp.usage == Usage(input=9, output=28, reasoning=244) and resp.usage.total == 281
    assert resp.id == "Un6LacrVMcjUxs0PmJfWoQc" and resp.finish is FinishReason.STOP
    again = gemini.parse_response(gemini.format_response(resp, "gemini-3-pro-preview"))
    assert again.parts == resp.parts and again.usage == resp.usage

    cached = gemini.parse_response(json.loads(whole("generate-content-cached-content-usage.json")))
    assert cached.usage == Usage(input=8, cached_input=3512, output=2, reasoning=42)
    assert cached.usage.total == 3564
    wire = gemini.usage_to_wire(cached.usage)
    assert wire["promptTokenCount"] == 3520 and wire["cachedContentTokenCount"] == 3512
    assert wire["thoughtsTokenCount"] == 42 and wire["totalTokenCount"] == 3564


def test_parse_response_folds_a_streamed_array():
    resp = gemini.parse_response(json.loads(whole(ARRAY_FIXTURE)))
    assert [type(p) for p in resp.parts] == [ReasoningPart, TextPart, ReasoningPart]
    assert resp.parts[1].text == "Scoop" and resp.usage.reasoning == 291


def test_429_retry_info_fixture():
    body = whole("error-429-resource-exhausted-retryinfo.json")
    assert gemini_retry_delay(body) == 26.0
    assert retry_after({}, body, 0.0) == 26.0
    err = classify_upstream(429, body, {}, 26.0)
    assert err.status == 429 and err.retry_after == 26.0
    out = gemini.format_error(err)["error"]
    assert out["status"] == "RESOURCE_EXHAUSTED" and out["code"] == 429
    assert gemini_retry_delay(json.dumps({"error": out}).encode()) == 26.0


def test_a_body_that_came_too_slowly_is_deadline_exceeded_like_an_upstream_timeout():
    """A Gemini client reads ``status`` to tell a timeout from a bad argument."""
    late = gemini.format_error(RequestTimeout("The request body did not arrive within 30 s."))["error"]
    assert (late["code"], late["status"]) == (408, "DEADLINE_EXCEEDED")
    assert gemini.format_error(UpstreamTimeout("slow"))["error"]["status"] == "DEADLINE_EXCEEDED"


def test_in_stream_error_chunk_is_typed():
    decoder = gemini.StreamDecoder()
    body = whole("error-429-resource-exhausted-retryinfo.json")
    (event,) = decoder.feed_doc(json.loads(body))
    assert isinstance(event, ErrorEvent) and isinstance(event.error, UpstreamRateLimited)
    assert event.error.retry_after == 26.0
    (event,) = decoder.feed_doc({"error": {"code": 500, "message": "boom", "status": "INTERNAL"}})
    assert isinstance(event.error, UpstreamServerError)


def test_blocked_prompt_finishes_as_content_filter():
    events = gemini.StreamDecoder().feed_doc({"promptFeedback": {"blockReason": "SAFETY"}, "responseId": "r"})
    assert events[-1] == Finish(FinishReason.CONTENT_FILTER)


# ---------------------------------------------------------------- requests


def captured() -> list:
    paths = sorted(REQUESTS.glob("gemini-cli-*.json")) + sorted(REQUESTS.glob("py-google-genai-*.json"))
    return [p for p in paths if not p.name.endswith("countTokens.json")]


@pytest.mark.parametrize("path", captured(), ids=lambda p: p.name[:48])
def test_captured_requests_parse_and_round_trip(path):
    capture = json.loads(path.read_text())
    body = capture["body"]
    stream = capture["path"].endswith(":streamGenerateContent")
    req = gemini.parse_request(body, model="m", stream=stream, sse=capture["query"].get("alt") == "sse")
    assert req.stream is stream and req.extra["gemini_sse"] is (capture["query"].get("alt") == "sse")
    assert gemini.build_request(req, "other") == body  # same protocol: as the client wrote it
    rebuilt = gemini.build_request(attrs.evolve(req, protocol="elsewhere"), "other")
    again = gemini.parse_request(rebuilt, model="m", stream=stream)
    assert _plain(again.messages) == _plain(req.messages)
    assert [t.name for t in again.tools] == [t.name for t in req.tools]
    assert again.system == ((TextPart("\n\n".join(p.text for p in req.system)),) if req.system else ())


def _plain(messages) -> list:
    """Messages without what a cross-protocol build drops (reasoning) or restores (ids)."""
    out = []
    for m in messages:
        for p in m.parts:
            if isinstance(p, ToolCallPart):
                out.append(("call", p.name, json.loads(p.arguments)))
            elif isinstance(p, ToolResultPart):
                out.append(("result", p.name, p.content))
            elif isinstance(p, TextPart):
                out.append(("text", p.text))
    return out


def test_tool_round_trip_request_details():
    capture = json.loads((REQUESTS / "py-google-genai-3.6.1__sdk__05_POST_v1_models_gemini-2.5-flash_generateContent.json").read_text())
    req = gemini.parse_request(capture["body"], model="m", stream=False)
    call = req.messages[1].parts[0]
    result = req.messages[2].parts[0]
    assert req.messages[2].role == "tool"
    assert isinstance(call, ToolCallPart) and call.id.startswith(GENERATED_ID_PREFIX)
    assert result.call_id == call.id and result.content == "sunny" and result.name == "get_weather"
    assert req.tools[0].parameters["required"] == ["city"]  # parameters_json_schema, snake case
    out = gemini.build_request(attrs.evolve(req, protocol="elsewhere"), "m")
    assert out["contents"][1]["parts"][0] == {
        "functionCall": {"name": "get_weather", "args": {"city": "ok"}}, "thoughtSignature": SKIP_SIGNATURE}
    assert out["contents"][2]["parts"][0] == {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}


def test_thought_signature_and_ids_kept_from_gemini_cli():
    capture = json.loads((REQUESTS / "gemini-cli-0.61.0__print-tool-roundtrip-yolo__05_POST_v1beta_models_gemini-3.8-flash_streamGenerateContent.json").read_text())
    req = gemini.parse_request(capture["body"], model="m", stream=True)
    calls = [p for m in req.messages for p in m.parts if isinstance(p, ToolCallPart)]
    results = [p for m in req.messages for p in m.parts if isinstance(p, ToolResultPart)]
    assert calls[0].id == "run_shell_command_1795558355339_0" == results[0].call_id
    assert calls[0].extra == {"thoughtSignature": SKIP_SIGNATURE}
    assert req.max_tokens is None and req.temperature == 1 and req.top_p == 0.95
    assert req.extra["thinking_config"] == {"includeThoughts": True, "thinkingLevel": "HIGH"}
    chat = openai_chat.build_request(req, "x", include_usage=True)
    tool_msgs = [m for m in chat["messages"] if m["role"] == "tool"]
    assert tool_msgs[0]["tool_call_id"] == calls[0].id


def test_openapi_schema_types_become_json_schema():
    body = {"contents": [{"parts": [{"text": "hi"}]}],
            "tools": [{"functionDeclarations": [{"name": "f", "parameters": {
                "type": "OBJECT", "properties": {"a": {"type": "ARRAY", "items": {"type": "STRING"}}}}}]},
                      {"googleSearch": {}}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
            "generationConfig": {"maxOutputTokens": 5, "stopSequences": ["x"], "topK": 3}}
    req = gemini.parse_request(body, model="m", stream=False, sse=False)
    assert req.tools[0].parameters == {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}
    assert [(t.kind.value, t.raw) for t in req.server_tools] == [("web_search", {"googleSearch": {}})]
    assert req.tool_choice == {"name": "f"} and req.max_tokens == 5 and req.stop == ("x",)
    assert req.extra["generation_config"] == {"topK": 3}


def test_from_chat_tool_results_get_names_and_turns_merge():
    chat = {"model": "x", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
        {"role": "user", "content": "and tomorrow?"},
    ], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "required", "max_tokens": 9}
    out = gemini.build_request(openai_chat.parse_request(chat), "m")
    assert out["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"},
                                            "thoughtSignature": SKIP_SIGNATURE}]
    assert out["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"output": "rain"}, "id": "call_1"}},
        {"text": "and tomorrow?"}]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert out["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == {"type": "object"}
    assert out["generationConfig"] == {"maxOutputTokens": 9}


@pytest.mark.parametrize("body, param", [
    ({}, "contents"),
    ({"contents": []}, "contents"),
    ({"contents": [{"role": "robot", "parts": []}]}, "contents[0].role"),
    ({"contents": [{"parts": [{"functionCall": {"args": {}}}]}]}, "contents[0].parts[0].functionCall.name"),
    ({"contents": [{"parts": "hi"}]}, "contents[0].parts"),
    ({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": "hot"}}, "generationConfig.temperature"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(Exception) as info:
        gemini.parse_request(body, model="m", stream=False)
    assert info.value.status == 400 and info.value.param == param


def test_count_tokens():
    assert gemini.count_tokens({"contents": [{"parts": [{"text": "say hi"}]}]})["totalTokens"] > 0
    prose = "The quick brown fox jumps over the lazy dog. " * 40
    inner = {"generateContentRequest": {"contents": [{"parts": [{"text": prose}]}]}}
    assert gemini.count_tokens(inner)["totalTokens"] >= tokens.count_text_tokens(prose)
    with pytest.raises(InvalidRequest):
        gemini.count_tokens({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": -1}})


# ---------------------------------------------------------------- encoder


def _req(sse: bool):
    return gemini.parse_request({"contents": [{"parts": [{"text": "hi"}]}]}, model="m", stream=True, sse=sse)


EVENTS = [StreamStart("r1", "up"), ReasoningDelta(text="think"), ReasoningDelta(signature="sig", issuer="gemini"),
          TextDelta("Hel"), TextDelta("lo"), ToolCallStart(0, "call_1", "f"), ToolCallDelta(0, '{"a"'),
          ToolCallDelta(0, ":1}"), Finish(FinishReason.TOOL_CALLS), UsageReport(Usage(input=3, output=4, reasoning=2))]


def _chunks(sse: bool, data: bytes) -> list:
    if sse:
        assert data.endswith(b"\r\n\r\n")
        return [json.loads(block[6:]) for block in data.split(b"\r\n\r\n") if block]
    return json.loads(data)


@pytest.mark.parametrize("sse", [True, False])
def test_encoder_round_trips_through_the_decoder(sse):
    encoder = gemini.StreamEncoder(_req(sse), "client-model")
    assert encoder.content_type == ("text/event-stream" if sse else "application/json")
    data = b"".join(encoder.encode([ev]) for ev in EVENTS) + encoder.close()
    chunks = _chunks(sse, data)
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 9,
                                           "thoughtsTokenCount": 2}
    assert chunks[-1]["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "f", "args": {"a": 1}, "id": "call_1"}}]
    assert chunks[1]["candidates"][0]["content"]["parts"] == [{"text": "Hel", "thoughtSignature": "sig"}]
    decoder = gemini.StreamDecoder()
    events = [ev for c in chunks for ev in decoder.feed_doc(c)]
    assert "".join(ev.text for ev in events if isinstance(ev, TextDelta)) == "Hello"
    assert [ev.signature for ev in events if isinstance(ev, ReasoningDelta) and ev.signature] == ["sig"]
    assert [ev.arguments for ev in events if isinstance(ev, ToolCallDelta)] == ['{"a": 1}']
    assert events[-2:] == [UsageReport(Usage(input=3, output=4, reasoning=2)), Finish(FinishReason.TOOL_CALLS)]


def test_array_error_closes_the_array():
    err = UpstreamServerError("boom")
    own = gemini.StreamEncoder(_req(False), "m")
    data = own.encode([StreamStart("r", "m"), TextDelta("a")]) + own.encode([ErrorEvent(err)]) + own.close()
    chunks = json.loads(data)
    assert chunks[-1]["error"]["code"] == 502 and chunks[-1]["error"]["status"] == "UNAVAILABLE"
    empty = gemini.StreamEncoder(_req(False), "m")
    assert json.loads(empty.encode([StreamStart("r", "m")]) + empty.error(err))[0]["error"]["message"] == "boom"
    assert json.loads(gemini.StreamEncoder(_req(False), "m").close()) == []
    # after forwarding a Gemini upstream's own array, a fresh encoder continues it
    forwarded = whole(ARRAY_FIXTURE)[:-2]  # the upstream broke off before "]"
    chunks = json.loads(forwarded + gemini.StreamEncoder(_req(False), "m").error(err))
    assert len(chunks) == 4 and "error" in chunks[-1]
    assert gemini.StreamEncoder(_req(True), "m").error(err).startswith(b'data: {"error":')


def test_error_element_is_held_until_the_array_closes():
    framer = JsonArrayFramer(gemini.StreamDecoder(light=True))
    first = framer.feed(b'[{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"responseId":"r"}\r\n,\r\n')
    held = framer.feed(b'{"error":{"code":500,"message":"x","status":"INTERNAL"}}')
    assert len(first) == 1 and held == []
    rest = framer.feed(b"\r\n]")
    assert b"".join(f.raw for f in first + rest).endswith(b"]")
    assert isinstance(rest[0].events[0], ErrorEvent)


def test_malformed_array_is_a_protocol_error():
    framer = JsonArrayFramer(gemini.StreamDecoder())
    frames = framer.feed(b'[{"a":1} oops') + framer.feed(b"more") + framer.close()
    assert b"".join(f.raw for f in frames) == b'[{"a":1} oopsmore'
    errors = [ev for f in frames for ev in f.events if isinstance(ev, ErrorEvent)]
    assert len(errors) == 1


# ---------------------------------------------------------------- the splitter


json_strings = st.text(alphabet=st.sampled_from(list('ab"\\{}[],: \n\u00e9\U0001f600')), max_size=12)
elements = st.dictionaries(json_strings, st.recursive(
    st.none() | st.booleans() | st.integers() | json_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_strings, inner, max_size=3), max_leaves=6),
    max_size=4)


@settings(max_examples=200, deadline=None)
@given(items=st.lists(elements, max_size=5), seps=st.sampled_from([",", "\r\n,\r\n", " , ", "\n,"]),
       data=st.data())
def test_splitter_recovers_every_element_at_any_split(items, seps, data):
    body = ("[" + seps.join(json.dumps(i, ensure_ascii=False) for i in items) + "]\n").encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10)))
    splitter = JsonArraySplitter()
    out = []
    for a, b in zip([0] + cuts, cuts + [len(body)]):
        out += splitter.feed(body[a:b])
    out += splitter.close()
    assert b"".join(e.raw for e in out) == body
    assert [json.loads(e.data) for e in out if e.data is not None] == items
    assert not any(e.error for e in out)


# ---------------------------------------------------------------- the provider's addressing


def test_provider_urls_and_framing_choice():
    from providers.gemini import GeminiProvider

    plain = GeminiProvider("g", "https://generativelanguage.googleapis.com/", None)
    versioned = GeminiProvider("g", "https://example.test/v1", None)
    assert plain.url("gemini-2.5-flash", "streamGenerateContent", sse=True) == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert versioned.url("models/x+status=429", "generateContent") == (
        "https://example.test/v1/models/x+status=429:generateContent")
    assert GeminiProvider.wants_sse(_req(True)) and not GeminiProvider.wants_sse(_req(False))
    chat = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert GeminiProvider.wants_sse(chat)
