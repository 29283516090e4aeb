"""What a client asks for survives the trip to every other protocol, and back.

Pure protocol tests, one per feature and protocol pair: structured output, system and
developer turns at their place, namespace tools, server tools, reasoning effort and
thinking budgets, usage buckets. Captured agent requests (``tests/fixtures/requests``,
attributed in ``tests/fixtures/SOURCES.md``) are the input where one exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocols import anthropic_messages, gemini, openai_chat, openai_responses
from protocols.anthropic_stream import StreamDecoder as AnthropicDecoder
from protocols.reasoning import BUDGETS
from protocols.server_tools import UnsupportedServerTool, drop_tools
from protocols.sse import SSEEvent
from protocols.structured_output import ANSWER_TOOL, AnswerToolDecoder, unwrap_response
from protocols.unified import (
    Effort,
    Finish,
    FinishReason,
    OutputKind,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolCallPart,
    ToolCallStart,
    UnifiedResponse,
    Usage,
    UsageReport,
)

REQUESTS = Path(__file__).parent / "fixtures" / "requests"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _fixture(name: str) -> dict:
    return json.loads((REQUESTS / name).read_bytes())["body"]


CLAUDE_CODE = "claude-code-2.1.331__print-tool-roundtrip__02_POST_v1_messages.json"
CODEX = "codex-0.169.0__http-tool-roundtrip__01_POST_v1_responses.json"
GEMINI_ROUTER = "gemini-cli-0.61.0__print-tool-roundtrip-yolo__03_POST_v1beta_models_gemini-3.5-flash-lite_generateContent.json"


def parse(protocol: str, body: dict, model: str = "m"):
    if protocol == "gemini":
        return gemini.parse_request(body, model=model, stream=False)
    return MODULES[protocol].parse_request(body)


def build(protocol: str, req, model: str = "upstream-model") -> dict:
    if protocol == "openai_chat":
        return openai_chat.build_request(req, model, include_usage=False)
    return MODULES[protocol].build_request(req, model)


MODULES = {"openai_chat": openai_chat, "openai_responses": openai_responses, "anthropic": anthropic_messages,
           "gemini": gemini}
PROTOCOLS = list(MODULES)
PAIRS = [(c, u) for c in PROTOCOLS for u in PROTOCOLS if c != u]
PAIR_IDS = [f"{c}-to-{u}" for c, u in PAIRS]


def _hello(protocol: str, **fields) -> dict:
    """A one-turn request in ``protocol``'s shape, with ``fields`` merged in."""
    if protocol == "openai_chat":
        return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    if protocol == "openai_responses":
        return {"model": "m", "input": "hi", **fields}
    if protocol == "anthropic":
        return {"model": "m", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}], **fields}
    return {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}


# ---------------------------------------------------------------- structured output

SCHEMA_FIELDS = {
    "openai_chat": {"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}},
    "openai_responses": {"text": {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA}}},
    "anthropic": {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    "gemini": {"generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}},
}
JSON_MODE_FIELDS = {
    "openai_chat": {"response_format": {"type": "json_object"}},
    "openai_responses": {"text": {"format": {"type": "json_object"}}},
    "gemini": {"generationConfig": {"responseMimeType": "application/json"}},
}


def schema_sent(protocol: str, body: dict, model: str) -> dict | None:
    if protocol == "openai_chat":
        fmt = body["response_format"]
        return fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else None
    if protocol == "openai_responses":
        fmt = body["text"]["format"]
        return fmt["schema"] if fmt["type"] == "json_schema" else None
    if protocol == "anthropic":
        if "output_config" in body:
            return body["output_config"]["format"]["schema"]
        [tool] = [t for t in body["tools"] if t["name"] == ANSWER_TOOL]
        assert body["tool_choice"] == {"type": "tool", "name": ANSWER_TOOL}
        return tool["input_schema"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    return body["generationConfig"].get("responseJsonSchema")


@pytest.mark.parametrize("client,upstream", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-3-7-sonnet-latest"])
def test_json_schema_reaches_the_upstream_family_field(client, upstream, model):
    req = parse(client, _hello(client, **SCHEMA_FIELDS[client]))
    assert req.output_format.kind is OutputKind.JSON_SCHEMA and req.output_format.schema == SCHEMA
    body = build(upstream, req, model)
    assert schema_sent(upstream, body, model) == SCHEMA
    if upstream == "anthropic":
        assert ("output_config" in body) is (model == "claude-sonnet-4-5")


@pytest.mark.parametrize("client,upstream", [(c, u) for c, u in PAIRS if c in JSON_MODE_FIELDS],
                         ids=[i for (c, _), i in zip(PAIRS, PAIR_IDS) if c in JSON_MODE_FIELDS])
def test_json_mode_reaches_every_family(client, upstream):
    req = parse(client, _hello(client, **JSON_MODE_FIELDS[client]))
    assert req.output_format.kind is OutputKind.JSON_OBJECT
    body = build(upstream, req, "claude-sonnet-4-5")
    sent = schema_sent(upstream, body, "claude-sonnet-4-5")
    # JSON mode: no schema where the protocol has a mode; an open object schema where it needs one
    assert sent in (None, {"type": "object"})
    if upstream == "anthropic":
        assert "output_config" not in body  # Anthropic JSON output needs a schema: the answer tool


@pytest.mark.parametrize("upstream", ["openai_chat", "openai_responses", "anthropic"])
def test_gemini_cli_router_schema_arrives_as_json_schema(upstream):
    """Gemini CLI's routing step writes OpenAPI types even in responseJsonSchema."""
    req = parse("gemini", _fixture(GEMINI_ROUTER))
    sent = schema_sent(upstream, build(upstream, req, "claude-haiku-4-5"), "claude-haiku-4-5")
    assert sent["type"] == "object"
    assert sent["properties"]["complexity_score"]["type"] == "integer"
    assert sent["required"] == ["complexity_reasoning", "complexity_score"]


def test_gemini_openapi_response_schema_arrives_as_json_schema():
    body = _hello("gemini", generationConfig={"responseMimeType": "application/json", "responseSchema": {
        "type": "OBJECT", "properties": {"n": {"type": "INTEGER"}}, "required": ["n"]}})
    sent = build("openai_chat", parse("gemini", body))
    assert sent["response_format"]["json_schema"]["schema"] == {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _anthropic_events(*docs: dict) -> list:
    return [SSEEvent(raw=b"", data=json.dumps(d), event=d["type"]) for d in docs]


def test_answer_tool_stream_comes_back_as_text():
    decoder = AnswerToolDecoder(AnthropicDecoder(), ANSWER_TOOL)
    events = []
    for ev in _anthropic_events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-3-7", "usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": ANSWER_TOOL, "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ):
        events.extend(decoder.feed(ev))
    assert not any(isinstance(e, (ToolCallStart, ToolCallDelta)) for e in events)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == '{"city":"Paris"}'
    assert [e.reason for e in events if isinstance(e, Finish)] == [FinishReason.STOP]
    assert decoder.ended  # the inner decoder's state shows through


def test_answer_tool_whole_response_comes_back_as_text():
    resp = UnifiedResponse("r", "m", (ToolCallPart("t", ANSWER_TOOL, '{"city":"Paris"}'),), FinishReason.TOOL_CALLS)
    out = unwrap_response(resp, ANSWER_TOOL)
    assert out.parts == (TextPart('{"city":"Paris"}'),) and out.finish is FinishReason.STOP
    other = UnifiedResponse("r", "m", (ToolCallPart("t", "Read", "{}"),), FinishReason.TOOL_CALLS)
    assert unwrap_response(other, ANSWER_TOOL) == other


def test_answer_tool_with_client_tools_lets_the_model_pick():
    body = _hello("openai_chat", **SCHEMA_FIELDS["openai_chat"],
                  tools=[{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}])
    sent = build("anthropic", parse("openai_chat", body), "claude-3-7-sonnet")
    assert [t["name"] for t in sent["tools"]] == ["Read", ANSWER_TOOL]
    assert sent["tool_choice"] == {"type": "any"}


# ---------------------------------------------------------------- system turns at their place


def test_claude_code_mid_conversation_system_turn_keeps_its_place():
    req = parse("anthropic", _fixture(CLAUDE_CODE))
    assert [m.role for m in req.messages] == ["user", "system", "assistant", "tool"]
    chat = build("openai_chat", req)
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "system", "assistant", "tool"]
    responses = build("openai_responses", req)
    roles = [i.get("role") or i["type"] for i in responses["input"]]
    assert roles[:3] == ["user", "developer", "assistant"] or roles[:2] == ["user", "developer"]
    assert responses["input"][1]["content"][0]["type"] == "input_text"
    assert "# Environment" in responses["input"][1]["content"][0]["text"]
    gem = build("gemini", req)
    assert "# Environment" in gem["systemInstruction"]["parts"][0]["text"]
    assert all("# Environment" not in json.dumps(c) for c in gem["contents"])


@pytest.mark.parametrize("client", ["openai_chat", "openai_responses"])
def test_late_system_and_developer_messages_stay_in_place(client):
    if client == "openai_chat":
        body = {"model": "m", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "developer", "content": "now answer in French"}]}
    else:
        body = {"model": "m", "instructions": "be brief", "input": [
            {"role": "user", "content": "hi"}, {"role": "developer", "content": "now answer in French"}]}
    req = parse(client, body)
    assert [p.text for p in req.system] == ["be brief"]
    assert [(m.role, m.text()) for m in req.messages] == [("user", "hi"), ("system", "now answer in French")]
    other = "openai_responses" if client == "openai_chat" else "openai_chat"
    sent = build(other, req)
    if other == "openai_chat":
        assert [(m["role"], m["content"]) for m in sent["messages"]] == [
            ("system", "be brief"), ("user", "hi"), ("system", "now answer in French")]
    else:
        assert sent["instructions"] == "be brief"
        assert [i["role"] for i in sent["input"]] == ["user", "developer"]
    ant = build("anthropic", req, "claude-sonnet-4-5")
    assert ant["system"] == "be brief\n\nnow answer in French"
    assert [m["role"] for m in ant["messages"]] == ["user"]
    kept = build("anthropic", req, "claude-opus-4-8")
    assert kept["system"] == "be brief"
    assert [m["role"] for m in kept["messages"]] == ["user", "system"]
    gem = build("gemini", req)
    assert gem["systemInstruction"]["parts"][0]["text"] == "be brief\n\nnow answer in French"


def test_user_turns_around_a_merged_system_turn_become_one_for_anthropic():
    req = parse("openai_chat", {"model": "m", "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"},
        {"role": "user", "content": "well?"}]})
    sent = build("anthropic", req, "claude-sonnet-4-5")
    assert sent["system"] == "be brief"
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in sent["messages"]] == [("user", ["hi", "well?"])]


# ---------------------------------------------------------------- namespace tools


@pytest.mark.parametrize("upstream", ["openai_chat", "anthropic", "gemini"])
def test_codex_namespace_tools_are_flattened_for_foreign_upstreams(upstream):
    req = parse("openai_responses", _fixture(CODEX))
    req = drop_tools(req, upstream, {"web_search": "drop"})
    body = build(upstream, req)
    if upstream == "openai_chat":
        names = [t["function"]["name"] for t in body["tools"]]
    elif upstream == "anthropic":
        names = [t["name"] for t in body["tools"]]
    else:
        names = [d["name"] for t in body["tools"] for d in t.get("functionDeclarations", [])]
    assert {"multi_agent_v1__spawn_agent", "multi_agent_v1__close_agent", "exec_command"} <= set(names)


def test_namespace_call_comes_back_to_a_codex_client_whole_and_streamed():
    req = parse("openai_responses", _fixture(CODEX))
    call = ToolCallPart("call_1", "multi_agent_v1__spawn_agent", '{"message":"go"}')
    whole = openai_responses.format_response(UnifiedResponse("r", "m", (call,), FinishReason.TOOL_CALLS), "m",
                                             request=req)
    [item] = whole["output"]
    assert (item["name"], item["namespace"], item["call_id"]) == ("spawn_agent", "multi_agent_v1", "call_1")
    encoder = openai_responses.StreamEncoder(req, "m")
    raw = encoder.encode([StreamStart("r", "m"), ToolCallStart(0, "call_1", "multi_agent_v1__spawn_agent"),
                          ToolCallDelta(0, '{"message":"go"}'), Finish(FinishReason.TOOL_CALLS),
                          UsageReport(Usage(input=1, output=1))]) + encoder.close()
    docs = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    done = [d["item"] for d in docs if d["type"] == "response.output_item.done"]
    assert [(i["name"], i.get("namespace")) for i in done] == [("spawn_agent", "multi_agent_v1")]
    plain = encoder.names.split("exec_command")
    assert plain == (None, "exec_command")


def test_namespace_call_from_a_responses_upstream_is_flattened_for_other_clients():
    doc = {"id": "resp_1", "model": "m", "status": "completed", "output": [
        {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "spawn_agent",
         "namespace": "multi_agent_v1", "arguments": "{}"}]}
    [call] = openai_responses.parse_response(doc).parts
    assert call.name == "multi_agent_v1__spawn_agent"


# ---------------------------------------------------------------- server tools

WEB_SEARCH = {
    "openai_responses": {"type": "web_search"},
    "anthropic": {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    "gemini": {"googleSearch": {}},
}


def _with_web_search(protocol: str) -> dict:
    return _hello(protocol, tools=[WEB_SEARCH[protocol]])


def _tools_sent(protocol: str, body: dict) -> list:
    return body.get("tools", [])


@pytest.mark.parametrize("client,upstream", [(c, u) for c, u in PAIRS if c in WEB_SEARCH],
                         ids=[i for (c, _), i in zip(PAIRS, PAIR_IDS) if c in WEB_SEARCH])
def test_web_search_goes_to_its_equivalent_or_is_refused(client, upstream):
    req = parse(client, _with_web_search(client))
    if upstream == "openai_chat":
        with pytest.raises(UnsupportedServerTool) as caught:
            build(upstream, req)
        assert caught.value.status == 400 and "web_search" in caught.value.message
        assert "web_search" in json.dumps(MODULES[client].format_error(caught.value))
        dropped = drop_tools(req, upstream, {"web_search": "drop"})
        assert "tools" not in build(upstream, dropped)
        return
    expected = {"openai_responses": {"type": "web_search"},
                "anthropic": {"type": "web_search_20250305", "name": "web_search"},
                "gemini": {"googleSearch": {}}}[upstream]
    assert expected in _tools_sent(upstream, build(upstream, req))


def test_drop_policy_is_per_tool_kind():
    req = parse("anthropic", _hello("anthropic", tools=[{"type": "code_execution_20250825", "name": "code_execution"}]))
    with pytest.raises(UnsupportedServerTool, match="code_execution_20250825"):
        build("openai_chat", req)
    assert drop_tools(req, "openai_chat", {"code_execution": "drop"}).server_tools == ()
    assert drop_tools(req, "openai_chat", {"code_execution": "refuse"}).server_tools == req.server_tools
    assert drop_tools(req, "openai_chat", {"web_search": "drop"}).server_tools == req.server_tools
    assert drop_tools(req, "anthropic", {"code_execution": "drop"}) is req  # same protocol: untouched


# ---------------------------------------------------------------- reasoning

EFFORT_FIELDS = {
    "openai_chat": lambda e: {"reasoning_effort": e},
    "openai_responses": lambda e: {"reasoning": {"effort": e}},
}


def reasoning_sent(protocol: str, body: dict, model: str):
    if protocol == "openai_chat":
        return body.get("reasoning_effort")
    if protocol == "openai_responses":
        return (body.get("reasoning") or {}).get("effort")
    if protocol == "anthropic":
        return (body.get("thinking") or {}).get("budget_tokens")
    return (body.get("generationConfig") or {}).get("thinkingConfig")


@pytest.mark.parametrize("effort", ["minimal", "low", "medium", "high", "xhigh"])
@pytest.mark.parametrize("client", list(EFFORT_FIELDS))
def test_effort_becomes_budget_and_level(client, effort):
    req = parse(client, _hello(client, **EFFORT_FIELDS[client](effort)))
    budget = BUDGETS[Effort(effort)]
    other = "openai_responses" if client == "openai_chat" else "openai_chat"
    assert reasoning_sent(other, build(other, req), "") == effort
    ant = build("anthropic", req, "claude-sonnet-4-5")
    assert ant["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert ant["max_tokens"] > budget  # no client max_tokens: the budget comes on top of the default
    assert reasoning_sent("gemini", build("gemini", req, "gemini-2.5-flash"), "") == {"thinkingBudget": budget}
    level = {"minimal": "low", "low": "low"}.get(effort, "high")
    assert reasoning_sent("gemini", build("gemini", req, "gemini-3-pro-preview"), "") == {"thinkingLevel": level}


@pytest.mark.parametrize("budget,effort", [(1024, "minimal"), (3000, "low"), (8192, "medium"), (12000, "high"),
                                           (60000, "high")])
@pytest.mark.parametrize("client", ["anthropic", "gemini"])
def test_budget_becomes_effort(client, budget, effort):
    if client == "anthropic":
        body = _hello("anthropic", thinking={"type": "enabled", "budget_tokens": budget})
    else:
        body = _hello("gemini", generationConfig={"thinkingConfig": {"thinkingBudget": budget}})
    req = parse(client, body)
    for upstream in ("openai_chat", "openai_responses"):
        assert reasoning_sent(upstream, build(upstream, req), "") == effort
    other = "gemini" if client == "anthropic" else "anthropic"
    sent = reasoning_sent(other, build(other, req, "gemini-2.5-pro"), "")
    assert sent == ({"thinkingBudget": budget} if other == "gemini" else budget)


def test_anthropic_budget_stays_below_max_tokens():
    req = parse("openai_chat", _hello("openai_chat", reasoning_effort="high", max_tokens=5000, temperature=0.2))
    body = build("anthropic", req, "claude-sonnet-4-5")
    assert body["max_tokens"] == 5000 and body["thinking"]["budget_tokens"] == 4999
    assert "temperature" not in body  # Anthropic refuses a temperature with thinking
    small = parse("openai_chat", _hello("openai_chat", reasoning_effort="high", max_tokens=900))
    assert "thinking" not in build("anthropic", small, "claude-sonnet-4-5")  # no budget of 1024 fits


def test_no_thinking_where_a_foreign_tool_turn_has_none_to_replay():
    body = _hello("openai_chat", reasoning_effort="high")
    body["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "Read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
    sent = build("anthropic", parse("openai_chat", body), "claude-sonnet-4-5")
    assert "thinking" not in sent  # Anthropic would refuse the tool turn without its thinking


def test_claude_code_effort_and_gemini_levels_travel():
    req = parse("anthropic", _fixture(CLAUDE_CODE))
    assert req.reasoning.effort is Effort.MEDIUM  # output_config.effort beside adaptive thinking
    assert build("openai_responses", req)["reasoning"] == {"effort": "medium"}
    gem = parse("gemini", _fixture(GEMINI_ROUTER))
    assert gem.reasoning.effort is Effort.HIGH
    assert build("openai_chat", gem)["reasoning_effort"] == "high"


def test_no_thinking_is_said_in_every_protocol():
    req = parse("gemini", _hello("gemini", generationConfig={"thinkingConfig": {"thinkingBudget": 0}}))
    assert build("openai_chat", req)["reasoning_effort"] == "none"
    assert "thinking" not in build("anthropic", req, "claude-sonnet-4-5")
    off = parse("anthropic", _hello("anthropic", thinking={"type": "disabled"}))
    assert build("gemini", off, "gemini-2.5-flash")["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


# ---------------------------------------------------------------- usage buckets


def test_every_bucket_reaches_every_client():
    usage = Usage(input=100, cached_input=40, cache_write=30, output=20, reasoning=10)
    chat = openai_chat.usage_to_wire(usage)
    assert chat["prompt_tokens_details"] == {"cached_tokens": 40, "cache_write_tokens": 30}
    assert chat["completion_tokens_details"] == {"reasoning_tokens": 10}
    from protocols.openai_responses_wire import usage_to_wire as responses_usage
    resp = responses_usage(usage)
    assert resp["input_tokens"] == 170 and resp["output_tokens"] == 30
    assert resp["input_tokens_details"] == {"cached_tokens": 40, "cache_write_tokens": 30}
    assert resp["output_tokens_details"] == {"reasoning_tokens": 10}
    from protocols.usage import normalize
    assert normalize("openai_responses", resp) == usage  # and read back the same
    gem = gemini.usage_to_wire(usage)
    # Gemini has no cache-write field: those tokens are in the prompt count, not lost
    assert gem["promptTokenCount"] == 170 and gem["cachedContentTokenCount"] == 40
    assert gem["thoughtsTokenCount"] == 10 and gem["totalTokenCount"] == usage.total
    from protocols.anthropic_wire import usage_to_wire as anthropic_usage
    ant = anthropic_usage(usage)
    assert (ant["cache_creation_input_tokens"], ant["cache_read_input_tokens"], ant["output_tokens"]) == (30, 40, 30)
