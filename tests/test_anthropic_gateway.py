"""Anthropic Messages through a real gateway socket, with the official SDKs as clients."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
import trio

from gateway.routes.anthropic import _parser
from providers.adapters.chain import ANTHROPIC_DEFAULT_MAX_TOKENS
from protocols import anthropic_messages
from protocols.secret import Secret
from protocols.sse import SSEDecoder
from providers.anthropic import AnthropicProvider
from providers.sim_count import sim_tokens
from tests.conftest import DEMO_KEY, FIXTURES, base_config, running_gateway

SIM_TEXT = "Hello from the Tollhouse simulator. This answer is deterministic and every word"
WEATHER = {"name": "get_weather", "description": "weather",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CAPTURED = sorted((FIXTURES / "requests").glob("claude-code-*")) + sorted((FIXTURES / "requests").glob("py-anthropic-*"))


@pytest.fixture
def config_doc(tmp_path):
    doc = base_config(tmp_path)
    doc["providers"]["sima"] = {"family": "simulator", "embedded": True, "protocol": "anthropic"}
    doc["models"].update({
        "claude-sim": {"targets": ["sima/sim-claude"]},
        "claude-529": {"targets": ["sima/sim-claude+status=529"]},
        "claude-midfail": {"targets": ["sima/sim-claude+error_after=3"]},
        "chat-midfail": {"targets": ["sim/sim-chat+error_after=3"]},
    })
    doc["pricing"]["sima/*"] = {"input": "3.00", "cached_input": "0.30", "cache_write": "3.75", "output": "15.00"}
    return doc


def _anthropic(gw, **kwargs) -> anthropic.AsyncAnthropic:
    kwargs.setdefault("api_key", DEMO_KEY)
    return anthropic.AsyncAnthropic(base_url=gw.url, max_retries=0, **kwargs)


def _openai(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)


def _ledger_usage(gw) -> tuple:
    [entry] = gw.ledger_entries()
    assert (entry["provenance"], entry["reason"]) == ("reported", "end")
    return entry["input"], entry["cached_input"], entry["cache_write"], entry["output"]


# ---------------------------------------------------------------- Anthropic on both sides


async def test_non_stream_text(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            reply = await client.messages.create(
                model="claude-sim", max_tokens=100, messages=[{"role": "user", "content": "hi"}])
            assert reply.content[0].text == SIM_TEXT and reply.stop_reason == "end_turn"
            assert reply.model == "sim-claude"  # same protocol: the upstream's body as sent
            assert _ledger_usage(gw) == (reply.usage.input_tokens, 0, 0, reply.usage.output_tokens)
            assert reply.usage.output_tokens == 12
            assert gw.simulator.bodies[-1]["model"] == "sim-claude"


async def test_stream_text(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            async with client.messages.stream(
                    model="claude-sim", max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
            assert text == SIM_TEXT and final.stop_reason == "end_turn"
            assert _ledger_usage(gw) == (final.usage.input_tokens, 0, 0, final.usage.output_tokens)
            assert final.usage.output_tokens == 12 and final.usage.input_tokens > 0


async def test_bearer_key_and_beta_query_are_accepted(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw, api_key=None, auth_token=DEMO_KEY) as client:
            reply = await client.beta.messages.create(
                model="claude-sim", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                betas=["context-management-2025-06-27"])
            assert reply.content[0].text.startswith("Hello")


async def test_tool_round_trip(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            messages = [{"role": "user", "content": "weather in Paris?"}]
            first = await client.messages.create(model="claude-sim", max_tokens=100, tools=[WEATHER], messages=messages)
            assert first.stop_reason == "tool_use"
            [call] = [b for b in first.content if b.type == "tool_use"]
            assert call.name == "get_weather" and call.input == {"city": "Paris"}
            messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
            async with client.messages.stream(model="claude-sim", max_tokens=100, tools=[WEATHER],
                                              messages=messages) as stream:
                final = await stream.get_final_message()
            assert final.content[0].text == "The tool returned: sunny"
            assert len(gw.ledger_entries()) == 2


# ---------------------------------------------------------------- across protocols


async def test_anthropic_client_chat_upstream(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            reply = await client.messages.create(
                model="demo", max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hi"}])
            assert reply.content[0].text == SIM_TEXT and reply.model == "demo" and reply.id.startswith("msg_")
            assert _ledger_usage(gw) == (reply.usage.input_tokens, 0, 0, reply.usage.output_tokens)
            sent = gw.simulator.bodies[-1]
            assert sent["messages"][0] == {"role": "system", "content": "be brief"} and sent["max_tokens"] == 100

            async with client.messages.stream(
                    model="demo", max_tokens=100, tools=[WEATHER],
                    messages=[{"role": "user", "content": "weather?"}]) as stream:
                events = [ev async for ev in stream]
                final = await stream.get_final_message()
            assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}
            assert final.model == "demo"
            assert events[0].type == "message_start"
            entry = gw.ledger_entries()[-1]
            assert (entry["input"], entry["output"]) == (final.usage.input_tokens, final.usage.output_tokens)


async def test_chat_client_anthropic_upstream(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _openai(gw) as client:
            reply = await client.chat.completions.create(
                model="claude-sim", messages=[{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == SIM_TEXT and reply.choices[0].finish_reason == "stop"
            assert _ledger_usage(gw) == (reply.usage.prompt_tokens, 0, 0, reply.usage.completion_tokens)
            sent = gw.simulator.bodies[-1]
            # no limit from the client: the anthropic family's default_max_tokens adapter sets one
            assert sent["system"] == "be brief" and sent["max_tokens"] == ANTHROPIC_DEFAULT_MAX_TOKENS

            stream = await client.chat.completions.create(
                model="claude-sim", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi"}])
            chunks = [c async for c in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SIM_TEXT
            usage = chunks[-1].usage
            entry = gw.ledger_entries()[-1]
            assert (entry["input"], entry["output"], entry["provenance"]) == (
                usage.prompt_tokens, usage.completion_tokens, "reported")


# ---------------------------------------------------------------- failures


async def test_upstream_529_reaches_the_client_as_overloaded(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            with pytest.raises(anthropic.APIStatusError) as info:
                await client.messages.create(model="claude-529", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
            assert info.value.status_code == 529
            assert info.value.body["error"]["type"] == "overloaded_error"


async def test_midstream_upstream_error_becomes_an_error_event(config_doc):
    body = {"model": "claude-midfail", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            for model, kind in (("claude-midfail", "overloaded_error"), ("chat-midfail", "api_error")):
                r = await http.post("/v1/messages", json={**body, "model": model}, headers={"x-api-key": DEMO_KEY})
                assert r.status_code == 200
                events = SSEDecoder().feed(r.content)
                assert [ev.event for ev in events][0] == "message_start"
                assert events[-1].event == "error"
                assert json.loads(events[-1].data)["error"]["type"] == kind
                assert b"message_stop" not in r.content
                assert gw.ledger_entries()[-1]["reason"] == "upstream_error"
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            with pytest.raises(anthropic.APIStatusError) as info:
                async with client.messages.stream(model="claude-midfail", max_tokens=50,
                                                  messages=[{"role": "user", "content": "hi"}]) as stream:
                    async for _ in stream:
                        pass
            assert "Overloaded" in str(info.value)


async def test_errors_use_anthropic_shape(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            good = {"model": "claude-sim", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post("/v1/messages", json=good, headers={"x-api-key": "nope"})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = await http.post("/v1/messages", json={"model": "claude-sim", "messages": good["messages"]},
                                headers={"x-api-key": DEMO_KEY})
            assert r.status_code == 400 and r.json() == {"type": "error", "error": {
                "type": "invalid_request_error", "message": "Missing required parameter: 'max_tokens'."}}
            r = await http.post("/v1/messages/count_tokens", content=b"{", headers={"x-api-key": DEMO_KEY})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
            r = await http.post("/v1/messages/count_tokens", json={"model": "m", "messages": []})
            assert r.status_code == 401 and r.json()["type"] == "error"
            r = await http.get("/v1/messages", headers={"x-api-key": DEMO_KEY})
            assert r.status_code == 405 and r.json()["type"] == "error"
            assert gw.ledger_entries() == []


# ---------------------------------------------------------------- count_tokens and models


async def test_count_tokens_and_models_list(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _anthropic(gw) as client:
            count = await client.messages.count_tokens(model="claude-sim", messages=[{"role": "user", "content": "say hi"}])
            # an Anthropic target counts with its own endpoint (the simulator's word rule)
            asked = {"model": "claude-sim", "messages": [{"role": "user", "content": "say hi"}]}
            assert count.input_tokens == sim_tokens(anthropic_messages.parse_request(asked, require_max_tokens=False))
            assert gw.simulator.counts == [("anthropic", {**asked, "model": "sim-claude"})]
            page = await client.models.list()
            ids = [m.id for m in page.data]
            assert "claude-sim" in ids and page.data[0].type == "model"
            with pytest.raises(anthropic.AuthenticationError):
                await client.with_options(api_key="wrong").models.list()
            assert gw.ledger_entries() == []


# ---------------------------------------------------------------- captured client requests


def _replay_headers(captured: dict) -> dict:
    skip = {"host", "content-length", "x-api-key", "accept-encoding", "connection", "authorization"}
    headers = {k: v for k, v in captured["headers"].items() if k.lower() not in skip}
    headers["x-api-key"] = DEMO_KEY
    return headers


@pytest.mark.parametrize("path", CAPTURED, ids=lambda p: p.name)
async def test_captured_requests_are_answered(config_doc, path):
    captured = json.loads(path.read_text())
    models = ["claude-sim", "claude-opus-anything"]  # the second falls to "*": a Chat upstream
    with trio.fail_after(15):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            for model in models if captured["body"] is not None else [None]:
                kwargs = {}
                if captured["body"] is not None:
                    kwargs["json"] = {**captured["body"], "model": model}
                r = await http.request(captured["method"], captured["path"], params=captured["query"],
                                       headers=_replay_headers(captured), **kwargs)
                assert r.status_code == 200, r.text
                if captured["path"].endswith("/count_tokens"):
                    assert r.json()["input_tokens"] > 0
                elif captured["method"] == "GET":
                    assert r.json()["has_more"] is False and r.json()["data"][0]["type"] == "model"
                elif captured["body"].get("stream"):
                    names = [ev.event for ev in SSEDecoder().feed(r.content) if ev.event]
                    assert names[0] == "message_start" and names[-1] == "message_stop"
                else:
                    assert r.json()["type"] == "message"


# ---------------------------------------------------------------- provider headers


def test_provider_forwards_the_clients_version_and_betas():
    provider = AnthropicProvider("a", "https://api.example", httpx.AsyncClient(), {"x-extra": "1"})
    credential = type("Cred", (), {"secret": Secret("sk-ant")})()
    req = anthropic_messages.parse_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
    assert provider.headers(req, credential) == {
        "x-api-key": "sk-ant", "anthropic-version": "2023-06-01", "content-type": "application/json",
        "accept-encoding": "identity", "x-extra": "1"}
    passed = {"anthropic-version": "2023-06-01", "anthropic-beta": "context-management-2025-06-27"}
    req = req.__class__(**{**{f: getattr(req, f) for f in ("protocol", "model", "messages", "max_tokens")},
                           "extra": {"anthropic_headers": passed, "anthropic_beta_query": True}})
    assert provider.headers(req, credential)["anthropic-beta"] == "context-management-2025-06-27"
    assert provider.url_for(req) == "https://api.example/v1/messages?beta=true"


def test_front_door_remembers_version_betas_and_beta_query():
    scope = {"headers": [(b"anthropic-version", b"2023-06-01"), (b"anthropic-beta", b"a,b"), (b"x-api-key", b"k")],
             "query_string": b"beta=true"}
    req = _parser(scope)({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]})
    assert req.extra["anthropic_headers"] == {"anthropic-version": "2023-06-01", "anthropic-beta": "a,b"}
    assert req.extra["anthropic_beta_query"] is True
    plain = _parser({"headers": [], "query_string": b"beta=false"})({"model": "m", "max_tokens": 1, "messages": [
        {"role": "user", "content": "x"}]})
    assert "anthropic_beta_query" not in plain.extra and plain.extra["anthropic_headers"] == {}
