"""The Gemini front door and the Gemini upstream family, through real sockets.

The official google-genai SDK is the client where it can be: its async client needs
asyncio, so its sync client runs in a worker thread with its own limiter and
``abandon_on_cancel`` (so ``fail_after`` can end a stuck call).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from openai import AsyncOpenAI

from tests.conftest import DEMO_KEY, FIXTURES, base_config, running_gateway

TIMEOUT = 20
REQUESTS = FIXTURES / "requests"
WEATHER = types.FunctionDeclaration(
    name="get_weather", description="Weather in a city",
    parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def gemini_config(tmp_path: Path) -> dict:
    doc = base_config(tmp_path)
    doc["providers"]["simg"] = {"family": "simulator", "embedded": True, "protocol": "gemini"}
    doc["models"]["gemini-sim"] = {"targets": ["simg/sim-gemini"]}
    doc["pricing"]["simg/sim-gemini"] = {"input": "1.00", "output": "2.00"}
    doc["pricing"]["simg/*"] = {"input": "1.00", "output": "2.00"}  # the scripted "+fault" labels
    return doc


@pytest.fixture
def config_doc(tmp_path):
    return gemini_config(tmp_path)


@pytest.fixture
def limiter():
    return trio.CapacityLimiter(4)


def sdk(url: str) -> genai.Client:
    return genai.Client(api_key=DEMO_KEY, http_options=types.HttpOptions(
        base_url=url, api_version="v1beta", retry_options=types.HttpRetryOptions(attempts=1)))


async def in_thread(limiter, fn):
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)


def call_sdk(url: str, fn):
    """Run ``fn(client)`` with a fresh SDK client, closed afterwards."""
    def run():
        with sdk(url) as client:
            return fn(client)
    return run


def stream_text(model: str, contents, config=None):
    def fn(client):
        chunks = list(client.models.generate_content_stream(model=model, contents=contents, config=config))
        return chunks
    return fn


# ---------------------------------------------------------------- Gemini client, Gemini upstream


async def test_sdk_generate_content_passthrough(config_doc, limiter):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            resp = await in_thread(limiter, call_sdk(gw.url, lambda c: c.models.generate_content(
                model="gemini-sim", contents="say hi")))
            assert resp.text.startswith("Hello from the Tollhouse simulator.")
            assert resp.candidates[0].finish_reason == types.FinishReason.STOP
            entry = gw.ledger_entries()[-1]
            assert resp.usage_metadata.prompt_token_count == entry["input"]
            assert resp.usage_metadata.candidates_token_count == entry["output"] == 12


async def test_sdk_stream_passthrough_usage_matches_ledger(config_doc, limiter):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            chunks = await in_thread(limiter, call_sdk(gw.url, stream_text("gemini-sim", "say hi")))
            text = "".join(c.text or "" for c in chunks)
            assert text == "Hello from the Tollhouse simulator. This answer is deterministic and every word"
            last = chunks[-1]
            assert last.candidates[0].finish_reason == types.FinishReason.STOP
            entry = gw.ledger_entries()[-1]
            assert entry["provider"] == "simg"
            assert last.usage_metadata.candidates_token_count == entry["output"] == 12
            assert last.usage_metadata.prompt_token_count == entry["input"]


async def test_sdk_tool_round_trip(config_doc, limiter):
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])

    def round_trip(client):
        first = client.models.generate_content(model="gemini-sim", contents="weather in Paris?", config=config)
        call = first.function_calls[0]
        history = [
            types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
            first.candidates[0].content,
            types.Content(role="user", parts=[types.Part.from_function_response(
                name=call.name, response={"output": "sunny, 21C"})]),
        ]
        second = client.models.generate_content(model="gemini-sim", contents=history, config=config)
        return call, second

    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            call, second = await in_thread(limiter, call_sdk(gw.url, round_trip))
            assert call.name == "get_weather" and call.args == {"city": "Paris"}
            assert second.text == "The tool returned: sunny, 21C"


async def test_sdk_stream_tool_call(config_doc, limiter):
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            for model in ("gemini-sim", "demo"):
                chunks = await in_thread(limiter, call_sdk(gw.url, stream_text(model, "weather?", config)))
                calls = [fc for c in chunks for fc in (c.function_calls or [])]
                assert [(fc.name, fc.args) for fc in calls] == [("get_weather", {"city": "Paris"})], model


# ---------------------------------------------------------------- across protocols


async def test_sdk_against_chat_upstream(config_doc, limiter):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            resp = await in_thread(limiter, call_sdk(gw.url, lambda c: c.models.generate_content(
                model="demo", contents="say hi")))
            assert resp.text.startswith("Hello from the Tollhouse simulator.")
            entry = gw.ledger_entries()[-1]
            assert entry["provider"] == "sim"
            assert resp.usage_metadata.candidates_token_count == entry["output"]
            assert resp.usage_metadata.prompt_token_count == entry["input"]

            chunks = await in_thread(limiter, call_sdk(gw.url, stream_text("demo", "say hi")))
            assert "".join(c.text or "" for c in chunks).startswith("Hello from the Tollhouse simulator.")
            entry = gw.ledger_entries()[-1]
            assert chunks[-1].usage_metadata.candidates_token_count == entry["output"] == 12
            assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


async def test_chat_client_against_gemini_upstream(config_doc):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0) as client:
                resp = await client.chat.completions.create(
                    model="gemini-sim", messages=[{"role": "user", "content": "say hi"}])
                assert resp.choices[0].message.content.startswith("Hello from the Tollhouse simulator.")
                entry = gw.ledger_entries()[-1]
                assert entry["provider"] == "simg"
                assert resp.usage.completion_tokens == entry["output"] == 12
                assert resp.usage.prompt_tokens == entry["input"]

                stream = await client.chat.completions.create(
                    model="gemini-sim", messages=[{"role": "user", "content": "say hi"}], stream=True,
                    stream_options={"include_usage": True})
                text, usage, finish = "", None, None
                async for chunk in stream:
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                    usage = chunk.usage or usage
                assert text.startswith("Hello from the Tollhouse simulator.") and finish == "stop"
                entry = gw.ledger_entries()[-1]
                assert usage.completion_tokens == entry["output"] == 12
                assert usage.prompt_tokens == entry["input"]


async def test_chat_client_tool_round_trip_via_gemini_upstream(config_doc):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            async with AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0) as client:
                messages = [{"role": "user", "content": "weather?"}]
                first = await client.chat.completions.create(model="gemini-sim", messages=messages, tools=tools)
                assert first.choices[0].finish_reason == "tool_calls"
                call = first.choices[0].message.tool_calls[0]
                assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
                messages += [first.choices[0].message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": "rain"}]
                second = await client.chat.completions.create(model="gemini-sim", messages=messages, tools=tools)
                assert second.choices[0].message.content == "The tool returned: rain"
            upstream = gw.simulator.bodies[-1]
            call_part = upstream["contents"][-2]["parts"][0]
            assert call_part["functionCall"]["id"] == call.id
            assert call_part["thoughtSignature"] == "skip_thought_signature_validator"
            response_part = upstream["contents"][-1]["parts"][0]["functionResponse"]
            assert response_part == {"name": "get_weather", "response": {"output": "rain"}, "id": call.id}


# ---------------------------------------------------------------- framing and raw requests


async def post(gw, path: str, body: dict, **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        return await client.post(path, json=body, headers={"x-goog-api-key": DEMO_KEY}, **kwargs)


@pytest.mark.parametrize("model", ["gemini-sim", "demo"])
async def test_stream_without_alt_sse_is_a_json_array(config_doc, model):
    body = {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            r = await post(gw, f"/v1beta/models/{model}:streamGenerateContent", body)
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/json")
            chunks = json.loads(r.content)
            assert isinstance(chunks, list) and len(chunks) > 2
            text = "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])
            assert text.startswith("Hello from the Tollhouse simulator.")
            assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
            assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == gw.ledger_entries()[-1]["output"]


def _captured() -> list[Path]:
    return sorted(p for p in REQUESTS.glob("*.json") if p.name.startswith(("gemini-cli-", "py-google-genai-")))


@pytest.mark.parametrize("path", _captured(), ids=lambda p: p.name.split("__", 1)[1][:40])
async def test_captured_client_requests_are_served(config_doc, path):
    """Every captured body, on its own path and query, routed by the ``*`` catch-all."""
    capture = json.loads(path.read_text())
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            r = await post(gw, capture["path"], capture["body"], params=capture["query"])
            assert r.status_code == 200, r.text
            if capture["path"].endswith(":countTokens"):
                assert r.json()["totalTokens"] > 0
            elif capture["query"].get("alt") == "sse":
                assert r.headers["content-type"].startswith("text/event-stream")
                assert b'"finishReason"' in r.content
            else:
                assert r.json()["candidates"][0]["content"]["parts"]


async def test_captured_requests_pass_through_to_gemini_upstream(config_doc):
    """The same bodies on a Gemini upstream reach it exactly as the client wrote them."""
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            for path in _captured():
                capture = json.loads(path.read_text())
                target = capture["path"].replace(capture["path"].split("/")[3].split(":")[0], "gemini-sim")
                r = await post(gw, target, capture["body"], params=capture["query"])
                assert r.status_code == 200, (path.name, r.text)
                if not target.endswith(":countTokens"):
                    assert gw.simulator.bodies[-1] == capture["body"]


# ---------------------------------------------------------------- errors


async def test_upstream_429_reaches_sdk_as_resource_exhausted(config_doc, limiter):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            def fn(client):
                try:
                    client.models.generate_content(model="simg/sim-gemini+status=429+retry_after=7", contents="hi")
                except genai_errors.ClientError as exc:
                    return exc
                raise AssertionError("expected a 429")
            exc = await in_thread(limiter, call_sdk(gw.url, fn))
            assert exc.code == 429 and exc.status == "RESOURCE_EXHAUSTED"
            retry = [d for d in exc.details["error"]["details"] if d["@type"].endswith("RetryInfo")]
            assert retry == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]


@pytest.mark.parametrize("alt", ["sse", None])
@pytest.mark.parametrize("model", ["simg/sim-gemini+error_after=3", "sim/sim-chat+error_after=3"])
async def test_midstream_upstream_error_becomes_an_error_element(config_doc, alt, model):
    body = {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}
    params = {"alt": alt} if alt else {}
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            r = await post(gw, f"/v1beta/models/{model}:streamGenerateContent", body, params=params)
            assert r.status_code == 200
            if alt:
                events = [json.loads(line[6:]) for line in r.text.split("\r\n\r\n") if line.startswith("data: ")]
            else:
                events = json.loads(r.content)
            assert "candidates" in events[0]
            assert events[-1]["error"]["code"] >= 500 and events[-1]["error"]["status"]
            assert sum("error" in e for e in events) == 1
            assert gw.ledger_entries()[-1]["reason"] == "upstream_error"


async def test_sdk_stream_error_midstream_raises(config_doc, limiter):
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            def fn(client):
                seen = []
                try:
                    for chunk in client.models.generate_content_stream(
                            model="simg/sim-gemini+error_after=3", contents="hi"):
                        seen.append(chunk.text)
                except genai_errors.APIError as exc:
                    return seen, exc
                raise AssertionError("expected the stream to fail")
            seen, exc = await in_thread(limiter, call_sdk(gw.url, fn))
            assert seen and exc.code >= 500


async def test_errors_answer_in_gemini_shape(config_doc):
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                r = await client.post("/v1beta/models/gemini-sim:generateContent", json=body)
                assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
                r = await client.post("/v1beta/models/gemini-sim:generateContent?key=nope", json=body)
                assert r.status_code == 401
                r = await client.post(f"/v1beta/models/gemini-sim:embedContent?key={DEMO_KEY}", json=body)
                assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
                r = await client.post(f"/v1beta/models/gemini-sim:generateContent?key={DEMO_KEY}", json={"contents": []})
                assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
                r = await client.post(f"/v1beta/models/gemini-sim:generateContent?key={DEMO_KEY}", content=b"{")
                assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
                r = await client.get(f"/v1beta/nothing-here?key={DEMO_KEY}")
                assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
            assert gw.ledger_entries() == []


async def test_models_list_and_count_tokens_with_sdk(config_doc, limiter):
    def fn(client):
        names = [m.name for m in client.models.list()]
        count = client.models.count_tokens(model="gemini-sim", contents="say hi")
        return names, count
    with trio.fail_after(TIMEOUT):
        async with running_gateway(config_doc) as gw:
            names, count = await in_thread(limiter, call_sdk(gw.url, fn))
            assert "models/gemini-sim" in names and "models/demo" in names
            assert count.total_tokens > 0
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                r = await client.get("/v1/models", params={"key": DEMO_KEY})
                assert r.json()["models"][0]["supportedGenerationMethods"] == [
                    "generateContent", "streamGenerateContent", "countTokens"]
                r = await client.get("/v1beta/models", headers={"x-goog-api-key": "wrong"})
                assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
