"""The field cache keeps a Responses upstream's encrypted reasoning for a client of
another protocol.

A Claude Code-like client (Anthropic Messages, thinking on, a tool loop, its session
header) talks to a model whose route falls back from a Responses upstream to an
Anthropic one and back. The simulator gives its Responses reasoning an
``encrypted_content`` when asked (``include``) and answers 400 to one it cannot verify,
as OpenAI does; its Anthropic family refuses any signature it did not make.
"""

from __future__ import annotations

import json

import anthropic
import pytest
import trio
import trio.testing

from gateway.field_cache import FieldCache, FieldCacheConfig, FieldRuleConfig, Scope
from gateway.field_rules import Tap, inject
from protocols import openai_chat, openai_responses
from protocols.unified import Reasoning, ReasoningDelta, TextDelta, ToolCallStart
from providers.sim_script import Fault
from providers.sim_thinking import THOUGHT
from tests.conftest import DEMO_KEY, base_config, running_gateway
from tests.test_field_cache import SESSION, THINKING, TOOLS

ENCRYPTED = "reasoning.encrypted_content"


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.3)


def _config(tmp_path, **field_cache):
    doc = base_config(tmp_path)
    doc["providers"] = {
        "gpt": {"family": "simulator", "embedded": True, "protocol": "openai_responses",
                "credentials": [{"id": "r", "key": "kr"}]},
        "claude": {"family": "simulator", "embedded": True, "protocol": "anthropic",
                   "credentials": [{"id": "c", "key": "kc"}]},
    }
    doc["models"] = {"sonnet": {"targets": ["gpt/sim-gpt", "claude/claude-sim"]}}
    doc["pricing"] = {"gpt/*": {"input": "1.00", "output": "2.00"}, "claude/*": {"input": "1.00", "output": "2.00"}}
    doc["streaming"] = {"ttfb_timeout_s": 600, "stall_timeout_s": 600}
    doc["cooldown"] = {"base_s": 5, "max_s": 60, "jitter": 0}
    if field_cache:
        doc["field_cache"] = field_cache
    return doc


class Conversation:
    def __init__(self, sdk: anthropic.AsyncAnthropic, stream: bool) -> None:
        self.sdk, self.stream, self.messages = sdk, stream, []

    async def turn(self, content) -> list[dict]:
        self.messages.append({"role": "user", "content": content})
        kwargs = dict(model="sonnet", max_tokens=4096, messages=self.messages, tools=TOOLS, thinking=THINKING,
                      extra_headers=SESSION)
        if self.stream:
            async with self.sdk.messages.stream(**kwargs) as s:
                reply = await s.get_final_message()
        else:
            reply = await self.sdk.messages.create(**kwargs)
        blocks = [b.model_dump(exclude_none=True) for b in reply.content]
        self.messages.append({"role": "assistant", "content": blocks})
        return blocks

    async def answer_tool(self, result: str = "sunny") -> list[dict]:
        call = next(b for b in self.messages[-1]["content"] if b["type"] == "tool_use")
        return await self.turn([{"type": "tool_result", "tool_use_id": call["id"], "content": result}])


def _reasoning_items(body: dict) -> list[dict]:
    return [i for i in body.get("input", ()) if isinstance(i, dict) and i.get("type") == "reasoning"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_encrypted_reasoning_survives_a_fallback_responses_anthropic_responses(tmp_path, clock, stream):
    with trio.fail_after(300):
        async with running_gateway(_config(tmp_path)) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            signer = gw.simulator.signer
            sim = gw.simulator
            try:
                talk = Conversation(sdk, stream)

                # 1. Responses answers with reasoning (asked for its encrypted_content) and a call
                first = await talk.turn("What is the weather in Paris?")
                assert [b["type"] for b in first] == ["thinking", "tool_use"]
                assert first[0]["signature"] == "" and first[0]["thinking"] == THOUGHT  # never OpenAI's blob
                asked = sim.bodies[-1]
                assert ENCRYPTED in asked["include"] and asked["store"] is False
                blob = signer.sign("openai_responses", THOUGHT)

                # 2. the tool result goes back to Responses with the reasoning item it came with
                await talk.answer_tool()
                [item] = _reasoning_items(sim.bodies[-1])
                assert item["id"].startswith("rs_") and item["encrypted_content"] == blob

                # 3. Responses is down: Anthropic answers; no OpenAI blob reaches it
                sim.key_faults["kr"] = Fault(status=503)
                mark = len(sim.bodies)
                third = await talk.turn("And in London?")
                assert [b["type"] for b in third] == ["thinking", "tool_use"]
                anthropic_signed = third[0]
                assert signer.valid("anthropic", anthropic_signed["thinking"], anthropic_signed["signature"])
                await talk.answer_tool("rainy")  # an answer of its own (the last mode matches turns by text)
                to_anthropic = [b for b in sim.bodies[mark:] if "messages" in b]
                assert len(to_anthropic) == 2 and blob not in json.dumps(to_anthropic)

                # 4. Responses is back: the first answer's reasoning goes back at its call,
                # and Anthropic's signed thinking never goes to Responses
                sim.key_faults.clear()
                await trio.sleep(61)  # past the cooldown
                mark = len(sim.bodies)
                fourth = await talk.turn("Thanks. Once more for Rome?")
                assert any(b["type"] == "tool_use" for b in fourth)
                [body] = sim.bodies[mark:]
                assert "input" in body  # Responses
                kept = _reasoning_items(body)
                assert [i["encrypted_content"] for i in kept] == [blob]
                assert kept[0]["id"] == item["id"], (kept, item)
                calls = [i for i in body["input"] if i.get("type") == "function_call"]
                assert body["input"].index(kept[0]) == body["input"].index(calls[0]) - 1  # right before its call
                assert anthropic_signed["signature"] not in json.dumps(body)
            finally:
                await sdk.close()


async def test_a_forged_encrypted_content_is_refused_by_the_simulator(tmp_path, clock):
    """The check is real: a Responses client replaying a blob the upstream did not make
    gets OpenAI's 400."""
    import httpx
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path)) as gw:
            body = {"model": "sonnet", "include": [ENCRYPTED], "reasoning": {"effort": "low"}, "input": [
                {"role": "user", "content": "hi"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "forged"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]}
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(f"{gw.url}/v1/responses", json=body,
                                      headers={"authorization": f"Bearer {DEMO_KEY}"})
    assert r.status_code == 400 and "could not be verified" in r.json()["error"]["message"]


# ---------------------------------------------------------------- the passes, directly


def _cache(*rules) -> FieldCache:
    return FieldCache.of(FieldCacheConfig(rules=tuple(FieldRuleConfig(**r) for r in rules)) if rules
                         else FieldCacheConfig())


def _chat(*turns, effort: str | None = "high"):
    messages = [{"role": "user", "content": "weather?"}]
    for call in turns:
        messages += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": call, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": call, "content": "sunny"}]
    doc = {"model": "m", "messages": messages, **({"reasoning_effort": effort} if effort else {})}
    return openai_chat.parse_request(doc)


def test_a_responses_answer_loses_its_blob_and_the_cache_puts_it_back_at_its_call():
    cache = _cache()
    scope = Scope("test", "c")
    tap = Tap(cache, "openai_responses", scope, now=0.0)
    events = tap.events([ReasoningDelta(text="hmm"),
                         ReasoningDelta(redacted="gAAAA", issuer="openai_responses", item_id="rs_7"),
                         ToolCallStart(0, "call_1", "get_weather")])
    tap.close()
    assert not any(isinstance(e, ReasoningDelta) and e.redacted for e in events)
    body = openai_responses.build_request(inject(_chat("call_1"), "openai_responses", cache, scope, 1.0), "gpt")
    assert ENCRYPTED in body["include"]
    reasoning = [i for i in body["input"] if i["type"] == "reasoning"]
    assert reasoning == [{"type": "reasoning", "id": "rs_7", "encrypted_content": "gAAAA",
                          "summary": [{"type": "summary_text", "text": "hmm"}]}]
    other = openai_responses.build_request(inject(_chat("call_1"), "openai_responses", cache, Scope("other", "c"),
                                                  1.0), "gpt")
    assert not [i for i in other["input"] if i["type"] == "reasoning"]  # never another key's


def test_encrypted_content_is_asked_only_of_a_reasoning_request_and_only_with_the_rule():
    scope = Scope("test", "c")
    with_rule = _cache()
    asked = openai_responses.build_request(inject(_chat(), "openai_responses", with_rule, scope, 0.0), "gpt")
    assert ENCRYPTED in asked["include"]
    plain = openai_responses.build_request(inject(_chat(effort=None), "openai_responses", with_rule, scope, 0.0), "gpt")
    assert "include" not in plain  # a model that does not reason refuses encrypted content
    without = _cache({"field": "anthropic_thinking", "mode": "last"})
    body = openai_responses.build_request(inject(_chat(), "openai_responses", without, scope, 0.0), "gpt")
    assert "include" not in body
    assert _chat().reasoning == Reasoning(effort=_chat().reasoning.effort)


def test_the_last_mode_keeps_a_text_answers_reasoning_for_the_next_turn():
    cache = _cache({"field": "responses_encrypted_content", "mode": "last"})
    scope = Scope("test", "c")
    tap = Tap(cache, "openai_responses", scope, now=0.0)
    tap.events([ReasoningDelta(text="t"), ReasoningDelta(redacted="gBBBB", issuer="openai_responses", item_id="rs_9"),
                TextDelta("Paris is sunny.")])
    tap.close()
    req = openai_chat.parse_request({"model": "m", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "weather?"}, {"role": "assistant", "content": "Paris is sunny."},
        {"role": "user", "content": "thanks"}]})
    body = openai_responses.build_request(inject(req, "openai_responses", cache, scope, 1.0), "gpt")
    assert [i.get("encrypted_content") for i in body["input"] if i["type"] == "reasoning"] == ["gBBBB"]
