"""Chat Completions through a real gateway socket, with the official openai SDK."""

from __future__ import annotations

import json
from contextlib import aclosing

import httpx
import openai
import trio

from tests.conftest import DEMO_KEY, base_config, running_gateway

SIM_TEXT = "Hello from the Tollhouse simulator. This answer is deterministic and every word"


def _client(gw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0)


async def test_async_sdk_non_stream(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _client(gw) as client:
            reply = await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == SIM_TEXT
            assert reply.usage.completion_tokens == 12
            [entry] = gw.ledger_entries()
            assert (entry["output"], entry["input"]) == (12, reply.usage.prompt_tokens)
            assert (entry["provenance"], entry["reason"]) == ("reported", "end")


async def test_async_sdk_stream_without_include_usage_gets_no_usage_chunk(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _client(gw) as client:
            stream = await client.chat.completions.create(
                model="demo", stream=True, messages=[{"role": "user", "content": "hi"}])
            chunks = [c async for c in stream]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SIM_TEXT
            assert all(c.choices for c in chunks), "the injected usage-only chunk must be dropped"
            [entry] = gw.ledger_entries()
            assert entry["output"] == 12 and entry["provenance"] == "reported"
            assert gw.simulator.bodies[-1]["stream_options"] == {"include_usage": True}


async def test_async_sdk_stream_with_include_usage_keeps_it(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _client(gw) as client:
            stream = await client.chat.completions.create(
                model="demo", stream=True, stream_options={"include_usage": True},
                messages=[{"role": "user", "content": "hi"}])
            chunks = [c async for c in stream]
            assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
            [entry] = gw.ledger_entries()
            assert entry["input"] == chunks[-1].usage.prompt_tokens


async def test_sync_sdk_stream_and_non_stream(config_doc):
    def use_sync(url: str) -> tuple[str, str]:
        with openai.OpenAI(base_url=url + "/v1", api_key=DEMO_KEY, max_retries=0) as client:
            whole = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
            streamed = "".join(
                c.choices[0].delta.content or ""
                for c in client.chat.completions.create(
                    model="demo", stream=True, messages=[{"role": "user", "content": "hi"}])
                if c.choices)
            return whole.choices[0].message.content, streamed

    with trio.fail_after(15):
        async with running_gateway(config_doc) as gw:
            whole, streamed = await trio.to_thread.run_sync(
                use_sync, gw.url, abandon_on_cancel=True, limiter=trio.CapacityLimiter(1))
            assert whole == streamed == SIM_TEXT
            assert len(gw.ledger_entries()) == 2


async def test_tool_call_round_trip(config_doc):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, _client(gw) as client:
            messages = [{"role": "user", "content": "Weather in Paris?"}]
            first = await client.chat.completions.create(model="demo", messages=messages, tools=tools)
            call = first.choices[0].message.tool_calls[0]
            assert first.choices[0].finish_reason == "tool_calls"
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments) == {"location": "Paris"}
            messages += [first.choices[0].message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
            second = await client.chat.completions.create(model="demo", messages=messages, tools=tools, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in second if c.choices])
            assert text == "The tool returned: sunny"


async def test_a_client_that_leaves_before_a_whole_answer_cancels_it_and_is_settled_once(tmp_path):
    doc = base_config(tmp_path)
    doc["models"]["slow"] = {"targets": ["sim/sim-chat+ttfb_stall=60"]}  # answers long after the test's deadline
    with trio.fail_after(10):
        async with running_gateway(doc) as gw:
            body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
            async with trio.open_nursery() as nursery:
                async def ask() -> None:
                    async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                        await client.post("/v1/chat/completions", json=body,
                                          headers={"authorization": f"Bearer {DEMO_KEY}"})
                nursery.start_soon(ask)
                await gw.simulator.wait_requests(1)
                nursery.cancel_scope.cancel()  # the client closes its connection, the answer not begun
            await gw.simulator.wait_idle()  # the gateway gave up the upstream call at once
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "client_cancel"
            # sent upstream and never answered: the hold, as the ledger's rules say
            assert (entry["cost_source"], entry["amount_micro"]) == ("hold", entry["hold_micro"])


async def test_client_disconnect_closes_upstream_and_settles_once(tmp_path):
    doc = base_config(tmp_path)
    doc["models"]["slow"] = {"targets": ["sim/sim-chat+stall_after=4"]}
    with trio.fail_after(10):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {DEMO_KEY}"}) as r:
                    assert r.status_code == 200
                    async with aclosing(r.aiter_bytes()) as body:
                        async for _ in body:
                            break
                    assert gw.simulator.in_flight == 1
            with trio.fail_after(1):
                await gw.simulator.wait_idle()
            with trio.fail_after(1):
                await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            # Charged what was consumed -- the input and the few tokens forwarded -- not the hold.
            assert entry["reason"] == "client_cancel"
            assert entry["provenance"] == "estimated" and entry["cost_source"] == "pricing"
            assert entry["input"] > 0 and 0 < entry["amount_micro"] < entry["hold_micro"]
