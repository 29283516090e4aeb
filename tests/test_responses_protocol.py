"""The Responses codec against recorded streams, captured client requests and itself."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.server_tools import drop_tools
from protocols import openai_chat, openai_responses
from protocols.errors import InvalidRequest, UpstreamQuotaExhausted, UpstreamRateLimited, UpstreamServerError
from protocols.sse import SSEDecoder
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
    UnifiedResponse,
    Usage,
    UsageReport,
)
from providers.base import SSEFramer
from tests.conftest import FIXTURES
from tests.streams import frames_in_pieces, split_at

RESPONSES = FIXTURES / "openai-responses"
STREAMS = sorted(RESPONSES.glob("*.sse"))
CODEX = sorted((FIXTURES / "requests").glob("codex-*_POST_v1_responses.json"))
SDK = sorted((FIXTURES / "requests").glob("py-openai-*_POST_v1_responses.json"))


def comparable(events) -> list:
    """Events with errors as (class, message, status): exceptions compare by identity."""
    return [(type(ev.error), ev.error.message, ev.error.status) if isinstance(ev, ErrorEvent) else ev
            for ev in events]


def decode(chunks, light: bool = False) -> list:
    sse = SSEDecoder()
    decoder = openai_responses.StreamDecoder(light=light)
    out: list = []
    for chunk in chunks:
        for ev in sse.feed(chunk):
            out.extend(decoder.feed(ev))
    for ev in sse.close():
        out.extend(decoder.feed(ev))
    return comparable(out)


def wire_events(data: bytes) -> list[dict]:
    """The fixture's events read naively, as the oracle the decoder is checked against."""
    return [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


def calls_of(events) -> list[tuple]:
    starts = {ev.index: ev for ev in events if isinstance(ev, ToolCallStart)}
    args: dict[int, str] = {}
    for ev in events:
        if isinstance(ev, ToolCallDelta):
            args[ev.index] = args.get(ev.index, "") + ev.arguments
    return [(s.id, s.name, args.get(i, "")) for i, s in sorted(starts.items())]


def usages(events) -> list[Usage]:
    return [ev.usage for ev in events if isinstance(ev, UsageReport)]


# ---------------------------------------------------------------- recorded streams


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_fixture_stream_decodes_to_its_text_calls_and_usage(path):
    data = path.read_bytes()
    wire = wire_events(data)
    events = decode([data])
    text = "".join(ev["text"] for ev in wire if ev["type"] == "response.output_text.done")
    assert "".join(ev.text for ev in events if isinstance(ev, TextDelta)) == text
    done_calls = [ev["item"] for ev in wire
                  if ev["type"] == "response.output_item.done" and ev["item"]["type"] == "function_call"]
    assert calls_of(events) == [(c["call_id"], c["name"], c["arguments"]) for c in done_calls]
    assert isinstance(events[0], StreamStart) and events[0].id == wire[0]["response"]["id"]
    terminal = wire[-1]
    if terminal["type"] == "response.completed":
        u = terminal["response"]["usage"]
        cached = u["input_tokens_details"]["cached_tokens"]
        reasoning = u["output_tokens_details"]["reasoning_tokens"]
        [usage] = usages(events)
        assert usage == Usage(input=u["input_tokens"] - cached, cached_input=cached,
                              output=u["output_tokens"] - reasoning, reasoning=reasoning)
        assert usage.total == u["total_tokens"], "every token counted once"
        assert events[-1] == Finish(FinishReason.TOOL_CALLS if done_calls else FinishReason.STOP)
    else:
        assert usages(events) == [] and not any(isinstance(ev, Finish) for ev in events)
        [(kind, message, status)] = [ev for ev in events if isinstance(ev, tuple)]
        assert kind is UpstreamQuotaExhausted and "exceeded your current quota" in message and status == 429


def test_known_numbers():
    """A few values read off the recordings by hand, so the oracle above is not the only check."""
    large = decode([(RESPONSES / "stream-reasoning-summary-and-text-large.sse").read_bytes()])
    assert usages(large) == [Usage(input=13, output=1680 - 1408, reasoning=1408)]
    reasoning = "".join(ev.text for ev in large if isinstance(ev, ReasoningDelta))
    assert reasoning.startswith("**Providing street crossing instructions**") and reasoning.count("\n\n**") == 3
    tool = decode([(RESPONSES / "stream-reasoning-function-call-usage.sse").read_bytes()])
    assert calls_of(tool) == [("call_CWXgs68YprAjp6t0371hiPOI", "final_result", '{"result":6666}')]
    [blob] = [ev.redacted for ev in tool if isinstance(ev, ReasoningDelta) and ev.redacted]
    assert blob.startswith("gAAAAAB")
    assert usages(tool)[0].reasoning == 448


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_light_mode_keeps_usage_finish_and_errors(path):
    data = path.read_bytes()
    full = decode([data])
    light = decode([data], light=True)
    keep = (StreamStart, UsageReport, Finish, tuple)
    assert [ev for ev in light if isinstance(ev, keep)] == [ev for ev in full if isinstance(ev, keep)]
    assert not any(isinstance(ev, (TextDelta, ReasoningDelta, ToolCallDelta)) for ev in light)


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
    frames = frames_in_pieces(SSEFramer(openai_responses.StreamDecoder(light=True)), data, 4093)
    assert b"".join(f.raw for f in frames) == data
    assert not any(f.drop for f in frames)


def test_events_without_event_lines_are_typed_by_their_data():
    data = b"".join(line + b"\n" for line in (RESPONSES / "stream-text-2025-03.sse").read_bytes().split(b"\n")
                    if not line.startswith(b"event: "))
    assert decode([data]) == decode([(RESPONSES / "stream-text-2025-03.sse").read_bytes()])


def test_error_events_are_classified():
    sse = SSEDecoder().feed(
        b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded","message":"slow down","param":null}\n\n')
    [ev] = openai_responses.StreamDecoder().feed(sse[0])
    assert isinstance(ev.error, UpstreamRateLimited) and ev.error.message == "slow down"
    failed = SSEDecoder().feed(b'event: response.failed\ndata: {"type":"response.failed","response":'
                               b'{"id":"resp_1","status":"failed","error":{"code":"server_error","message":"boom"}}}\n\n')
    out = openai_responses.StreamDecoder(light=True).feed(failed[0])
    assert out[0] == StreamStart("resp_1", "") and isinstance(out[1].error, UpstreamServerError)


def test_incomplete_is_length():
    raw = (b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"id":"resp_2","status":'
           b'"incomplete","incomplete_details":{"reason":"max_output_tokens"},"output":[],"usage":'
           b'{"input_tokens":5,"input_tokens_details":{"cached_tokens":2},"output_tokens":7,'
           b'"output_tokens_details":{"reasoning_tokens":7},"total_tokens":12}}}\n\n')
    events = decode([raw], light=True)
    assert events[-2:] == [UsageReport(Usage(input=3, cached_input=2, output=0, reasoning=7)), Finish(FinishReason.LENGTH)]


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("path", CODEX + SDK, ids=lambda p: p.name.split("__", 1)[1])
def test_same_protocol_build_is_the_client_body_with_the_model_replaced(path):
    body = json.loads(path.read_bytes())["body"]
    req = openai_responses.parse_request(body)
    assert openai_responses.build_request(req, "upstream-model") == {**body, "model": "upstream-model"}


@pytest.mark.parametrize("path", CODEX + SDK, ids=lambda p: p.name.split("__", 1)[1])
def test_translation_round_trips_through_unified(path):
    body = json.loads(path.read_bytes())["body"]
    req = openai_responses.parse_request(body)
    rebuilt = openai_responses.build_request(attrs.evolve(req, protocol="other"), req.model)
    again = openai_responses.parse_request(rebuilt)
    assert again.messages == req.messages
    assert "".join(p.text for p in again.system) == "\n\n".join(p.text for p in req.system)
    # namespace tools went out flattened, so they come back as plain functions
    assert [(t.name, t.parameters) for t in again.tools] == [(t.name, t.parameters) for t in req.tools]
    assert [t.kind for t in again.server_tools] == [t.kind for t in req.server_tools]
    assert again.extra == {**req.extra, "store": False}
    chat_req = drop_tools(req, "openai_chat", {"web_search": "drop"})  # Chat has no web search
    assert openai_chat.build_request(chat_req, "chat-model", include_usage=True)["messages"]


def test_codex_tool_round_trip_request():
    body = json.loads(CODEX[-1].read_bytes())["body"]
    req = openai_responses.parse_request(body)
    assert req.stream and req.model == "gpt-5.1-codex"
    assert req.system[0].text.startswith("You are a coding agent running in the Codex CLI")
    assert [m.role for m in req.messages] == ["user", "user", "assistant", "tool"]
    [call] = req.messages[2].parts
    assert call == ToolCallPart("call_8d5eb27e1a3a4bdc83b54dd4", "exec_command", '{"cmd": "echo tool-ok"}',
                                extra={"id": "fc_a24f678d67534777aa23d0786ec9c4b8"})
    [result] = req.messages[3].parts
    assert isinstance(result, ToolResultPart) and result.call_id == call.id and "tool-ok" in result.content
    assert {t.name for t in req.tools} >= {"exec_command", "write_stdin", "view_image"}
    assert "tools" not in req.extra  # the namespace is flattened, web_search a server tool
    assert {t.name for t in req.tools} >= {"multi_agent_v1__spawn_agent", "multi_agent_v1__close_agent"}
    assert [(t.kind.value, t.wire_type) for t in req.server_tools] == [("web_search", "web_search")]
    assert req.extra["include"] == ["reasoning.encrypted_content"] and req.extra["store"] is False
    assert req.extra["prompt_cache_key"] == body["prompt_cache_key"]
    chat = openai_chat.build_request(drop_tools(req, "openai_chat", {"web_search": "drop"}), "m", include_usage=True)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "user", "assistant", "tool"]
    assert chat["messages"][3]["tool_calls"][0]["id"] == call.id


def test_reasoning_items_with_encrypted_content_round_trip():
    answer = json.loads((RESPONSES / "response-nonstream-reasoning.json").read_bytes())
    reasoning_item = answer["output"][0]
    body = {"model": "gpt-5-mini", "store": False, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "12 + 7, times 3, times 10?"}]},
        reasoning_item, answer["output"][1],
        {"type": "function_call", "call_id": "call_1", "name": "calculator", "arguments": '{"a":1,"b":2,"op":"add"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "3"}]},
    ]}
    req = openai_responses.parse_request(body)
    assistant = req.messages[1]
    reasoning = assistant.parts[0]
    assert isinstance(reasoning, ReasoningPart)
    assert reasoning.redacted == reasoning_item["encrypted_content"]
    assert reasoning.text == reasoning_item["summary"][0]["text"] and reasoning.extra["id"] == reasoning_item["id"]
    assert [type(p) for p in assistant.parts] == [ReasoningPart, TextPart, ToolCallPart]
    assert req.messages[2].parts[0].content == (TextPart("3"),)
    rebuilt = openai_responses.build_request(attrs.evolve(req, protocol="other"), "gpt-5-mini")
    [item] = [i for i in rebuilt["input"] if i["type"] == "reasoning"]
    assert item == {"type": "reasoning", "id": reasoning_item["id"], "summary": reasoning_item["summary"],
                    "encrypted_content": reasoning_item["encrypted_content"]}
    assert openai_responses.parse_request(rebuilt).messages == req.messages


def test_foreign_reasoning_is_not_replayed_to_openai():
    req = openai_chat.parse_request({"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "reasoning_content": "think"},
        {"role": "user", "content": "again"}]})
    body = openai_responses.build_request(req, "gpt")
    assert [i.get("role") for i in body["input"]] == ["user", "assistant", "user"]
    assert body["input"][1]["content"] == [{"type": "output_text", "text": "yo"}]


@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 3}, "input"),
    ({"model": "m", "input": ["x"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
])
def test_bad_requests_name_the_field(body, param):
    with pytest.raises(InvalidRequest) as info:
        openai_responses.parse_request(body)
    assert info.value.param == param


def test_chat_tool_choice_and_tools_translate():
    req = openai_chat.parse_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "max_tokens": 9})
    body = openai_responses.build_request(req, "gpt")
    assert body["tools"] == [{"type": "function", "name": "f", "description": "",
                              "parameters": {"type": "object"}, "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "f"} and body["max_output_tokens"] == 9


# ---------------------------------------------------------------- whole responses and errors


def test_parse_and_format_a_whole_response():
    doc = json.loads((RESPONSES / "response-nonstream-reasoning.json").read_bytes())
    resp = openai_responses.parse_response(doc)
    assert [type(p) for p in resp.parts] == [ReasoningPart, TextPart]
    assert resp.parts[1].text.endswith("Final result: 570") and resp.parts[0].redacted.startswith("gAAAA")
    assert resp.usage == Usage(input=865, output=163 - 128, reasoning=128)
    assert resp.finish is FinishReason.STOP
    out = openai_responses.format_response(resp, "client-model")
    assert out["id"] == doc["id"] and out["object"] == "response" and out["status"] == "completed"
    assert out["usage"] == {k: doc["usage"][k] for k in out["usage"]}
    assert out["output"][0]["id"] == doc["output"][0]["id"]
    assert openai_responses.parse_response(out).parts == resp.parts


def test_format_response_for_calls_and_length():
    resp = UnifiedResponse("chatcmpl-9", "m", (ToolCallPart("call_1", "f", "{}"),), FinishReason.TOOL_CALLS,
                           Usage(input=3, cached_input=2, output=4, reasoning=1))
    out = openai_responses.format_response(resp, "m")
    assert out["id"] == "resp_chatcmpl-9"
    assert out["output"][0]["type"] == "function_call" and out["output"][0]["call_id"] == "call_1"
    assert out["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 5,
                            "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 10}
    cut = openai_responses.format_response(attrs.evolve(resp, parts=(TextPart("ab"),), finish=FinishReason.LENGTH), "m")
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}


def test_format_error_has_openais_shape():
    recorded = json.loads((RESPONSES / "error-400-unsupported-parameter.json").read_bytes())
    ours = openai_responses.format_error(InvalidRequest("Unsupported parameter: 'temperature'.", param="temperature"))
    assert set(ours["error"]) == set(recorded["error"])
    assert ours["error"]["type"] == recorded["error"]["type"] and ours["error"]["param"] == "temperature"


# ---------------------------------------------------------------- the encoder


def _request():
    return openai_responses.parse_request({"model": "m", "input": "hi", "stream": True})


def test_encoder_writes_the_full_event_sequence_and_decodes_back():
    events = [StreamStart("chatcmpl-1", "up"), ReasoningDelta("think"),
              ReasoningDelta(redacted="blob", issuer="openai_responses"), TextDelta("Hel"), TextDelta("lo"), ToolCallStart(0, "call_1", "f"), ToolCallDelta(0, '{"a"'),
              ToolCallDelta(0, ":1}"), Finish(FinishReason.TOOL_CALLS), UsageReport(Usage(input=3, output=4, reasoning=2))]
    encoder = openai_responses.StreamEncoder(_request(), "m")
    data = encoder.encode(events[:4]) + encoder.encode(events[4:]) + encoder.close()
    assert encoder.close() == b""
    wire = wire_events(data)
    names = [line[7:].decode() for line in data.split(b"\n") if line.startswith(b"event: ")]
    assert names == [ev["type"] for ev in wire]
    assert [ev["sequence_number"] for ev in wire] == list(range(len(wire)))
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    final = wire[-1]["response"]
    assert final["id"] == "resp_chatcmpl-1" and final["model"] == "m" and final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["output"][0]["encrypted_content"] == "blob"
    assert final["output"][1]["content"][0]["text"] == "Hello"
    assert final["output"][2]["arguments"] == '{"a":1}' and final["output"][2]["call_id"] == "call_1"
    assert final["usage"]["output_tokens"] == 6 and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 2
    back = decode([data])
    assert "".join(ev.text for ev in back if isinstance(ev, TextDelta)) == "Hello"
    assert calls_of(back) == [("call_1", "f", '{"a":1}')]
    assert back[-2:] == [UsageReport(Usage(input=3, output=4, reasoning=2)), Finish(FinishReason.TOOL_CALLS)]


def test_encoder_length_finish_is_incomplete():
    encoder = openai_responses.StreamEncoder(_request(), "m")
    data = encoder.encode([StreamStart("x", "m"), TextDelta("a"), Finish(FinishReason.LENGTH)]) + encoder.close()
    last = wire_events(data)[-1]
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_encoder_error_is_an_error_event_then_response_failed_and_ends_the_stream():
    encoder = openai_responses.StreamEncoder(_request(), "m")
    data = encoder.encode([StreamStart("x", "m"), TextDelta("a"), ErrorEvent(UpstreamRateLimited("slow down"))])
    assert encoder.close() == b"" and encoder.error(UpstreamServerError("again")) == b""
    error, last = wire_events(data)[-2:]
    assert error["type"] == "error" and error["error"]["code"] == "rate_limit_exceeded"
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "rate_limit_exceeded", "message": "slow down"}
    assert last["sequence_number"] == error["sequence_number"] + 1
    fresh = openai_responses.StreamEncoder(_request(), "m").error(UpstreamServerError("boom"))
    assert [ev["type"] for ev in wire_events(fresh)] == ["error", "response.failed"], "no second response.created"


def test_a_resumed_encoder_continues_the_upstream_response():
    encoder = openai_responses.StreamEncoder(_request(), "m")
    encoder.resume("resp_upstream", 11)
    events = wire_events(encoder.error(UpstreamServerError("cut")))
    assert [ev["sequence_number"] for ev in events] == [11, 12]
    assert events[-1]["response"]["id"] == "resp_upstream"
