"""The Responses front door and upstream through real sockets, with the official openai SDK."""

from __future__ import annotations

import json
from contextlib import aclosing

import httpx
import openai
import pytest
import trio

from tests.conftest import DEMO_KEY, FIXTURES, base_config, running_gateway

SIM_TEXT = "Hello from the Tollhouse simulator. This answer is deterministic and every word"
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather", "strict": True,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                         "additionalProperties": False}}]
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
REQUESTS = sorted(p for p in (FIXTURES / "requests").glob("*.json")
                  if p.name.startswith(("codex-", "py-openai-")) and "_POST_" in p.name)


@pytest.fixture
def responses_doc(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["sim"]["server_tools"] = {"web_search": "drop"}  # Codex offers it; Chat has none
    doc["providers"]["simr"] = {"family": "simulator", "embedded": True, "protocol": "openai_responses"}
    doc["models"]["gpt-sim"] = {"targets": ["simr/sim-gpt"]}
    doc["models"]["gpt-sim-fail"] = {"targets": ["simr/sim-gpt+error_after=3"]}
    doc["pricing"]["simr/sim-gpt"] = {"input": "1.25", "cached_input": "0.125", "output": "10.00"}
    doc["pricing"]["simr/*"] = {"input": "1.25", "cached_input": "0.125", "output": "10.00"}
    return doc


def _client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)


async def _events(stream) -> list:
    async with aclosing(stream.__aiter__()) as events:
        return [ev async for ev in events]


@pytest.mark.parametrize("model", ["gpt-sim", "demo"])
async def test_text_non_stream(responses_doc, model):
    """Same protocol (gpt-sim) and a Chat upstream (demo) look the same to the client."""
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            reply = await client.responses.create(model=model, input="hi")
            assert reply.object == "response" and reply.status == "completed"
            assert reply.id.startswith("resp_")
            assert reply.output_text == SIM_TEXT
            assert reply.usage.output_tokens == 12
            [entry] = gw.ledger_entries()
            [sim] = gw.simulator.reported
            assert (entry["input"], entry["output"]) == (sim.input, sim.output) == (
                reply.usage.input_tokens, reply.usage.output_tokens)
            assert (entry["provenance"], entry["reason"]) == ("reported", "end")


@pytest.mark.parametrize("model", ["gpt-sim", "demo"])
async def test_text_stream(responses_doc, model):
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            events = await _events(await client.responses.create(model=model, input="hi", stream=True))
            kinds = [ev.type for ev in events]
            assert kinds[:2] == ["response.created", "response.in_progress"]
            assert kinds[-1] == "response.completed"
            for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                         "response.content_part.done", "response.output_item.done"):
                assert kind in kinds
            assert [ev.sequence_number for ev in events] == list(range(len(events)))
            text = "".join(ev.delta for ev in events if ev.type == "response.output_text.delta")
            final = events[-1].response
            assert text == final.output_text == SIM_TEXT
            [entry] = gw.ledger_entries()
            [sim] = gw.simulator.reported
            assert (entry["input"], entry["output"]) == (sim.input, sim.output) == (
                final.usage.input_tokens, final.usage.output_tokens)
            assert entry["output"] == 12 and entry["provenance"] == "reported"
            assert entry["provider"] == ("simr" if model == "gpt-sim" else "sim")


@pytest.mark.parametrize("model", ["gpt-sim", "demo"])
async def test_tool_round_trip(responses_doc, model):
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            first = await client.responses.create(model=model, input="Weather in Paris?", tools=TOOLS)
            [call] = [item for item in first.output if item.type == "function_call"]
            assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
            assert call.call_id
            history = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
                       {"type": "function_call_output", "call_id": call.call_id, "output": "sunny 21C"}]
            events = await _events(await client.responses.create(
                model=model, input=history, tools=TOOLS, stream=True))
            assert events[-1].type == "response.completed"
            assert events[-1].response.output_text == "The tool returned: sunny 21C"
            assert len(gw.ledger_entries()) == 2


async def test_streamed_tool_call_events(responses_doc):
    """A Chat upstream's tool call reaches a Responses client as function_call events."""
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            events = await _events(await client.responses.create(
                model="demo", input="Weather in Paris?", tools=TOOLS, stream=True))
            kinds = [ev.type for ev in events]
            assert "response.function_call_arguments.delta" in kinds
            assert "response.function_call_arguments.done" in kinds
            [call] = [item for item in events[-1].response.output if item.type == "function_call"]
            assert json.loads(call.arguments) == {"city": "Paris"}


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_client_to_responses_upstream(responses_doc, stream):
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
            if stream:
                chunks = await _events(await client.chat.completions.create(
                    model="gpt-sim", messages=messages, stream=True, stream_options={"include_usage": True}))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                usage = chunks[-1].usage
            else:
                reply = await client.chat.completions.create(model="gpt-sim", messages=messages)
                text, usage = reply.choices[0].message.content, reply.usage
            assert text == SIM_TEXT
            sent = gw.simulator.bodies[-1]
            assert sent["instructions"] == "Be brief." and sent["store"] is False
            assert sent["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
            [entry] = gw.ledger_entries()
            assert entry["provider"] == "simr"
            [sim] = gw.simulator.reported
            assert (entry["input"], entry["output"]) == (sim.input, sim.output) == (
                usage.prompt_tokens, usage.completion_tokens)
            assert entry["output"] == 12 and entry["provenance"] == "reported"


async def test_chat_client_tool_round_trip_via_responses_upstream(responses_doc):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            messages = [{"role": "user", "content": "Weather?"}]
            first = await client.chat.completions.create(model="gpt-sim", messages=messages, tools=tools)
            assert first.choices[0].finish_reason == "tool_calls"
            call = first.choices[0].message.tool_calls[0]
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
            second = await client.chat.completions.create(model="gpt-sim", messages=messages, tools=tools)
            assert second.choices[0].message.content == "The tool returned: sunny"
            kinds = [item["type"] for item in gw.simulator.bodies[-1]["input"]]
            assert kinds == ["message", "function_call", "function_call_output"]


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.name.split("__", 1)[1])
@pytest.mark.parametrize("routed", ["as-captured", "gpt-sim"])
async def test_captured_requests_are_served(responses_doc, path, routed):
    """Every request Codex and the openai SDK sent gets a 200: as captured (the "*"
    route, a Chat upstream) and routed to the Responses upstream."""
    captured = json.loads(path.read_bytes())
    body = dict(captured["body"])
    if routed == "gpt-sim":
        body["model"] = "gpt-sim"
    with trio.fail_after(15):
        async with running_gateway(responses_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                r = await client.post(captured["path"], json=body, headers=AUTH)
                assert r.status_code == 200, r.text
                if not body.get("stream"):
                    assert r.json()["object"] in ("response", "chat.completion")
                elif captured["path"].endswith("/responses"):
                    last = [block for block in r.text.split("\n\n") if block][-1]
                    assert last.startswith("event: response.completed\n")
                else:
                    assert r.text.endswith("data: [DONE]\n\n")
            assert len(gw.ledger_entries()) == 1


async def test_midstream_upstream_error_reaches_client_as_an_api_error(responses_doc):
    """The stream ends with an ``error`` event, which the SDK raises, then ``response.failed``."""
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw, _client(gw) as client:
            events = []
            with pytest.raises(openai.APIError, match="Overloaded"):
                async with aclosing((await client.responses.create(
                        model="gpt-sim-fail", input="hi", stream=True)).__aiter__()) as stream:
                    async for ev in stream:
                        events.append(ev)
            assert events[0].type == "response.created"
            assert [ev.type for ev in events].count("response.output_text.delta") == 2
            assert "response.completed" not in [ev.type for ev in events]
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "upstream_error"


async def test_chat_client_sees_responses_upstream_failure(responses_doc):
    with trio.fail_after(10):
        async with running_gateway(responses_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                body = {"model": "gpt-sim-fail", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                r = await client.post("/v1/chat/completions", json=body, headers=AUTH)
                assert r.status_code == 200
                assert '"error"' in r.text and "Overloaded" in r.text
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "upstream_error"
