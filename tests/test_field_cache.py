"""The field cache: signed reasoning survives a fallback between vendors.

A Claude Code-like client (Anthropic Messages, thinking on, a tool loop, its session
header) talks to a model whose route falls back from an Anthropic upstream to a Gemini
one and back. Both are the simulator, which signs its thinking per family and answers
400 to a signature it did not make, as the real APIs do.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
import trio
import trio.testing

from gateway.field_cache import FieldCache, FieldCacheConfig, FieldKind, FieldRuleConfig, FieldStore, Mode, Scope
from gateway.field_rules import Tap, inject
from protocols import anthropic_messages
from protocols.unified import ReasoningDelta, TextDelta, ToolCallDelta, ToolCallStart
from providers.sim_script import Fault
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

TOOLS = [{"name": "get_weather", "description": "weather",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
THINKING = {"type": "enabled", "budget_tokens": 2048}
SESSION = {"x-claude-code-session-id": "126c647d-4e1f-4578-8416-5be6040b0f0d"}
OTHER_KEY = "th-other-key"


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.3)


def _config(tmp_path, **field_cache):
    doc = base_config(tmp_path)
    doc["providers"] = {
        "claude": {"family": "simulator", "embedded": True, "protocol": "anthropic",
                   "credentials": [{"id": "c", "key": "kc"}]},
        "gem": {"family": "simulator", "embedded": True, "protocol": "gemini",
                "credentials": [{"id": "g", "key": "kg"}]},
    }
    doc["models"] = {"sonnet": {"targets": ["claude/claude-sim", "gem/gemini-2.5-sim"]}}
    doc["pricing"] = {"claude/*": {"input": "1.00", "output": "2.00"}, "gem/*": {"input": "1.00", "output": "2.00"}}
    doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "100.00"},
                   {"name": "other", "key": OTHER_KEY, "credit_usd": "100.00"}]
    doc["streaming"] = {"ttfb_timeout_s": 600, "stall_timeout_s": 600}
    doc["cooldown"] = {"base_s": 5, "max_s": 60, "jitter": 0}
    if field_cache:
        doc["field_cache"] = field_cache
    return doc


class Conversation:
    """A Claude Code-like conversation: it keeps every block it was given and sends
    its whole history back each turn."""

    def __init__(self, sdk: anthropic.AsyncAnthropic, stream: bool = True) -> None:
        self.sdk = sdk
        self.stream = stream
        self.messages: list = []

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

    async def answer_tool(self) -> list[dict]:
        call = next(b for b in self.messages[-1]["content"] if b["type"] == "tool_use")
        return await self.turn([{"type": "tool_result", "tool_use_id": call["id"], "content": "sunny"}])


def _upstream(gw, since: int) -> list[tuple[str, dict]]:
    """What each upstream was sent since ``since``: (family, body)."""
    return [("gemini" if "contents" in b else "anthropic", b) for b in gw.simulator.bodies[since:]]


def _assistant_blocks(body: dict) -> list[dict]:
    return [b for m in body["messages"] if m["role"] == "assistant" for b in m["content"]]


def _gemini_model_parts(body: dict) -> list[dict]:
    return [p for c in body["contents"] if c.get("role") == "model" for p in c["parts"]]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_thinking_survives_a_fallback_anthropic_gemini_anthropic(tmp_path, clock, stream):
    with trio.fail_after(300):
        async with running_gateway(_config(tmp_path)) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            try:
                talk = Conversation(sdk, stream)
                signer = gw.simulator.signer

                # 1. Anthropic answers: signed thinking, then a call
                first = await talk.turn("What is the weather in Paris?")
                anthropic_signed = [b for b in first if b["type"] == "thinking"]
                assert anthropic_signed and signer.valid("anthropic", anthropic_signed[0]["thinking"],
                                                         anthropic_signed[0]["signature"])
                assert [b["type"] for b in first] == ["thinking", "tool_use"]

                # 2-4. Anthropic is down: Gemini answers the tool result, then calls a tool of its own
                gw.simulator.key_faults["kc"] = Fault(status=503)
                mark = len(gw.simulator.bodies)
                await talk.answer_tool()
                second = await talk.turn("And in London?")
                gemini_thinking = [b for b in second if b["type"] == "thinking"]
                assert gemini_thinking and all(b["signature"] == "" for b in gemini_thinking), \
                    "a Gemini thought reached the Anthropic client with a signature"
                assert any(b["type"] == "tool_use" for b in second)
                await talk.answer_tool()
                sent = _upstream(gw, mark)
                gemini_bodies = [b for f, b in sent if f == "gemini"]
                assert len(gemini_bodies) == 3
                # the thoughtSignature of Gemini's call went back to Gemini on that call
                calls = [p for p in _gemini_model_parts(gemini_bodies[-1]) if "functionCall" in p]
                own = [p for p in calls if p["functionCall"].get("id") == second[-1]["id"]]
                assert own and signer.valid("gemini", "The user wants an answer; a tool may help.",
                                            own[0]["thoughtSignature"])

                # 5-6. Anthropic is back
                gw.simulator.key_faults.clear()
                await trio.sleep(61)  # past the cooldown
                mark = len(gw.simulator.bodies)
                third = await talk.turn("Thanks. Once more for Rome?")
                assert [b["type"] for b in third] == ["thinking", "tool_use"]
                final = await talk.answer_tool()
                assert any(b["type"] == "text" for b in final)
                async with httpx.AsyncClient(base_url=gw.url) as admin:
                    state = (await admin.get("/admin/field-cache",
                                             headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).json()
                assert state["enabled"] and state["entries"] >= 1 and 0 < state["bytes"] <= state["max_bytes"]
                assert anthropic_signed[0]["signature"] not in json.dumps(state)  # counts, never a kept field
                sent = _upstream(gw, mark)
                assert [f for f, _ in sent] == ["anthropic", "anthropic"]
                for _, body in sent:
                    thinking = [b for b in _assistant_blocks(body) if b["type"] == "thinking"]
                    # the Anthropic-signed blocks, as the client sent them; never a foreign one
                    assert all(signer.valid("anthropic", b["thinking"], b.get("signature")) for b in thinking)
                    sent_bytes = [json.dumps(b) for b in thinking]
                    assert json.dumps(anthropic_signed[0]) in sent_bytes
                    assert not any(b["signature"] == "" for b in thinking)
                    assert "The user wants an answer" not in json.dumps(
                        [b for b in _assistant_blocks(body) if b["type"] == "text"])
            finally:
                await sdk.close()


async def test_anthropic_back_in_the_middle_of_a_gemini_tool_cycle_answers_without_thinking(tmp_path, clock):
    """Gemini made the call whose result Anthropic now reads: its thought cannot go to
    Anthropic, and Anthropic wants the open tool cycle to open with thinking, so this
    one request goes without ``thinking``; the next user turn has it again."""
    with trio.fail_after(300):
        async with running_gateway(_config(tmp_path)) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            try:
                talk = Conversation(sdk)
                gw.simulator.key_faults["kc"] = Fault(status=503)
                called = await talk.turn("What is the weather in Paris?")
                assert [b["type"] for b in called] == ["thinking", "tool_use"]
                assert called[0]["signature"] == ""
                gw.simulator.key_faults.clear()
                await trio.sleep(61)
                mark = len(gw.simulator.bodies)
                answered = await talk.answer_tool()
                assert [b["type"] for b in answered] == ["text"]
                again = await talk.turn("And in Rome?")
                assert [b["type"] for b in again] == ["thinking", "tool_use"]
                (f1, cycle), (f2, fresh) = _upstream(gw, mark)
                assert (f1, f2) == ("anthropic", "anthropic")
                assert "thinking" not in cycle and fresh["thinking"] == THINKING
                for body in (cycle, fresh):
                    assert not any(b["type"] == "thinking" for b in _assistant_blocks(body))
            finally:
                await sdk.close()


async def test_another_key_replaying_the_same_conversation_gets_nothing_kept_for_the_first(tmp_path, clock):
    with trio.fail_after(300):
        async with running_gateway(_config(tmp_path)) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            other = anthropic.AsyncAnthropic(base_url=gw.url, api_key=OTHER_KEY, max_retries=0)
            try:
                gw.simulator.key_faults["kc"] = Fault(status=503)  # Gemini answers everything
                talk = Conversation(sdk)
                called = await talk.turn("What is the weather in Paris?")
                call_id = called[-1]["id"]
                stranger = Conversation(other)
                stranger.messages = [dict(m) for m in talk.messages]  # same history, same session header
                mark = len(gw.simulator.bodies)
                await stranger.answer_tool()
                await talk.answer_tool()
                (_, theirs), (_, ours) = _upstream(gw, mark)

                def signature_of(body):
                    return next(p["thoughtSignature"] for p in _gemini_model_parts(body)
                                if p.get("functionCall", {}).get("id") == call_id)
                assert signature_of(theirs) == "skip_thought_signature_validator"
                assert gw.simulator.signer.valid("gemini", "The user wants an answer; a tool may help.",
                                                 signature_of(ours))
            finally:
                await other.close()
                await sdk.close()


async def test_without_the_cache_the_anthropic_upstream_refuses_the_foreign_thinking(tmp_path, clock):
    """The simulator really checks: with the cache off, Gemini's thought reaches the
    client without a signature (never Gemini's), and the client's body, sent to
    Anthropic as written, gets the real API's 400 for an unsigned block: dropping it is
    the cache's work."""
    with trio.fail_after(300):
        async with running_gateway(_config(tmp_path, enabled=False)) as gw:
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            try:
                talk = Conversation(sdk)
                gw.simulator.key_faults["kc"] = Fault(status=503)
                called = await talk.turn("What is the weather in Paris?")
                assert called[0]["type"] == "thinking" and called[0]["signature"] == ""
                gw.simulator.key_faults.clear()
                await trio.sleep(61)
                with pytest.raises(anthropic.BadRequestError, match="Invalid `signature` in `thinking` block"):
                    await talk.answer_tool()
            finally:
                await sdk.close()


# ---------------------------------------------------------------- the passes, directly


def _cache(**config) -> FieldCache:
    if "rules" in config:
        config["rules"] = tuple(FieldRuleConfig(**r) for r in config["rules"])
    return FieldCache.of(FieldCacheConfig(**config))


def _anthropic_stream(tap: Tap) -> tuple:
    return tap.events([ReasoningDelta(text="hmm"), ReasoningDelta(signature="sig-A"),
                       ToolCallStart(0, "toolu_1", "get_weather"), ToolCallDelta(0, "{}")])


def _history_request():
    """A Gemini client's next request, with the call the Anthropic upstream made."""
    from protocols import gemini
    doc = {"contents": [{"role": "user", "parts": [{"text": "weather?"}]},
                        {"role": "model", "parts": [{"functionCall": {"id": "toolu_1", "name": "get_weather",
                                                                      "args": {}}}]},
                        {"role": "user", "parts": [{"functionResponse": {"id": "toolu_1", "name": "get_weather",
                                                                         "response": {"output": "sunny"}}}]}]}
    return gemini.parse_request(doc, model="sonnet", stream=False, sse=False)


def test_a_translated_answer_loses_its_signature_and_the_cache_keeps_it():
    cache = _cache()
    scope = Scope("test", "session:s1")
    events = _anthropic_stream(Tap(cache, "anthropic", scope, now=0.0))
    assert events[0] == ReasoningDelta(text="hmm")
    assert not any(isinstance(e, ReasoningDelta) and e.signature for e in events)
    req = inject(_history_request(), "anthropic", cache, scope, now=1.0)
    body = anthropic_messages.build_request(req, "claude-sim")
    assert body["messages"][1]["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": "sig-A"}


def test_an_entry_of_one_key_is_never_used_for_another():
    cache = _cache()
    _anthropic_stream(Tap(cache, "anthropic", Scope("test", "session:s1"), now=0.0))
    for scope in (Scope("other", "session:s1"), Scope("test", "session:s2")):
        body = anthropic_messages.build_request(inject(_history_request(), "anthropic", cache, scope, 1.0),
                                                "claude-sim")
        assert not any(b["type"] == "thinking" for m in body["messages"] for b in m["content"])


def test_entries_expire_after_their_ttl():
    cache = _cache(ttl_s=60.0)
    scope = Scope("test", "session:s1")
    _anthropic_stream(Tap(cache, "anthropic", scope, now=100.0))
    key = (scope, FieldKind.ANTHROPIC_THINKING, Mode.PER_TOOL_CALL, "toolu_1")
    assert cache.store.get(key, now=159.0) is not None
    assert cache.store.get(key, now=160.0) is None
    assert cache.store.statistics().expired == 1 and cache.store.statistics().entries == 0


def test_the_byte_cap_evicts_the_least_recently_used():
    store = FieldStore(max_bytes=1000, ttl_s=3600.0)
    scope = Scope("test", "c")
    keys = [(scope, FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.PER_TOOL_CALL, f"call_{i}") for i in range(10)]
    for key in keys[:4]:
        store.put(key, "x" * 150, now=0.0)
    assert store.get(keys[0], now=1.0) is not None  # used: now the most recent
    for key in keys[4:]:
        store.put(key, "x" * 150, now=2.0)
    stats = store.statistics()
    assert stats.bytes <= 1000 and stats.evicted > 0
    assert store.get(keys[1], now=3.0) is None and store.get(keys[9], now=3.0) is not None
    store.put(keys[0], "x" * 5000, now=4.0)  # larger than the cap: not kept, and its old value is gone
    assert store.get(keys[0], now=5.0) is None and store.statistics().bytes <= 1000


def test_expired_entries_leave_as_new_ones_come():
    store = FieldStore(max_bytes=100_000, ttl_s=10.0)
    scope = Scope("test", "c")
    for i in range(5):
        store.put((scope, FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.PER_TOOL_CALL, f"old_{i}"), "sig", now=0.0)
    store.put((scope, FieldKind.GEMINI_THOUGHT_SIGNATURE, Mode.PER_TOOL_CALL, "new"), "sig", now=11.0)
    assert store.statistics().entries == 1 and store.statistics().expired == 5


def test_the_last_answer_goes_back_only_to_the_turn_it_made():
    cache = _cache()
    scope = Scope("test", "c")
    tap = Tap(cache, "anthropic", scope, now=0.0)
    tap.events([ReasoningDelta(text="hmm"), ReasoningDelta(signature="sig-A"), TextDelta("Paris is sunny.")])
    tap.close()
    from protocols import openai_chat

    def chat(answer: str):
        return openai_chat.parse_request({"model": "m", "messages": [
            {"role": "user", "content": "weather?"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "thanks"}]})
    same = anthropic_messages.build_request(inject(chat("Paris is sunny."), "anthropic", cache, scope, 1.0), "c")
    assert same["messages"][1]["content"][0]["signature"] == "sig-A"
    other = anthropic_messages.build_request(inject(chat("Rome is sunny."), "anthropic", cache, scope, 1.0), "c")
    assert [b["type"] for b in other["messages"][1]["content"]] == ["text"]


def test_a_mode_not_built_for_a_field_is_refused_with_its_path(tmp_path):
    from gateway.config import ConfigError, parse_config
    doc = _config(tmp_path, rules=[{"field": "prompt_cache_key", "mode": "last"},
                                   {"field": "anthropic_thinking", "mode": "everything"}])
    with pytest.raises(ConfigError) as err:
        parse_config(doc, env={})
    text = str(err.value)
    assert "field_cache.rules[0].mode" in text and "field_cache.rules[1].mode" in text


def test_a_blob_no_rule_keeps_is_still_kept_from_a_client_of_another_protocol():
    """A Responses upstream's encrypted_content would reach an Anthropic client as
    redacted thinking, which Anthropic refuses: the client gets the summary only."""
    cache = _cache()
    tap = Tap(cache, "openai_responses", Scope("test", "c"), now=0.0)
    events = tap.events([ReasoningDelta(text="summary"), ReasoningDelta(redacted="gAAAAblob"), TextDelta("hi")])
    assert events == (ReasoningDelta(text="summary"), TextDelta("hi"))
    assert cache.store.statistics().entries == 0


def test_thinking_larger_than_the_store_is_shown_and_not_kept():
    cache = _cache(max_bytes=1000)
    tap = Tap(cache, "anthropic", Scope("test", "c"), now=0.0)
    events = tap.events([ReasoningDelta(text="x" * 600), ReasoningDelta(text="y" * 600),
                         ReasoningDelta(signature="sig"), ToolCallStart(0, "toolu_1", "get_weather")])
    tap.close()
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["x" * 600, "y" * 600]
    assert cache.store.statistics().entries == 0


def test_foreign_thinking_leaves_an_anthropic_request_even_without_an_anthropic_rule():
    cache = _cache(rules=[{"field": "gemini_thought_signature", "mode": "per_tool_call"}])
    doc = {"model": "sonnet", "max_tokens": 100, "thinking": THINKING, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "a thought", "signature": ""},
                                          {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}]}]}
    req = inject(anthropic_messages.parse_request(doc), "anthropic", cache, Scope("test", "c"), 0.0)
    body = anthropic_messages.build_request(req, "claude-sim")
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]
    assert "thinking" not in body


# ---------------------------------------------------------------- turn modes


def _chat(*turns):
    """A Chat client's request: ``turns`` alternate user text and assistant items; an
    assistant item is its text, or ``("call", id)`` for a tool call answered by "sunny"."""
    from protocols import openai_chat
    messages = []
    for i, t in enumerate(turns):
        if i % 2 == 0:
            messages.append({"role": "user", "content": t})
        elif isinstance(t, tuple):
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": t[1], "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]})
            messages.append({"role": "tool", "tool_call_id": t[1], "content": "sunny"})
        else:
            messages.append({"role": "assistant", "content": t})
    return openai_chat.parse_request({"model": "m", "messages": messages})


def _think(cache, scope, req, signature: str, answer: str = "", call: str = "", now: float = 0.0) -> None:
    """An Anthropic upstream's answer to ``req``: signed thinking, then text or a call."""
    from gateway.field_cache import user_turn_of
    tap = Tap(cache, "anthropic", scope, now, user_turn_of(req))
    tap.events([ReasoningDelta(text="hmm"), ReasoningDelta(signature=signature)]
               + ([TextDelta(answer)] if answer else []) + ([ToolCallStart(0, call, "get_weather")] if call else []))
    tap.close()


def _signatures(req, cache, scope, now: float = 1.0) -> list:
    """Per assistant turn of the Anthropic body built for ``req``: the signatures it opens with."""
    body = anthropic_messages.build_request(inject(req, "anthropic", cache, scope, now), "claude-sim")
    return [[b["signature"] for b in m["content"] if b["type"] == "thinking"]
            for m in body["messages"] if m["role"] == "assistant"]


def test_mode_all_puts_every_kept_answer_back_at_its_own_turn_and_only_for_its_key():
    cache = _cache(rules=[{"field": "anthropic_thinking", "mode": "all"}], ttl_s=60.0)
    scope = Scope("test", "c")
    _think(cache, scope, _chat("weather?"), "sig-A", answer="Paris is sunny.", now=0.0)
    _think(cache, scope, _chat("weather?", "Paris is sunny.", "and Rome?"), "sig-B", answer="Rome is sunny.", now=10.0)
    later = _chat("weather?", "Paris is sunny.", "and Rome?", "Rome is sunny.", "thanks")
    assert _signatures(later, cache, scope) == [["sig-A"], ["sig-B"]]
    edited = _chat("weather?", "Paris is rainy.", "and Rome?", "Rome is sunny.", "thanks")
    assert _signatures(edited, cache, scope) == [[], ["sig-B"]]
    assert _signatures(later, cache, Scope("other", "c")) == [[], []]
    assert _signatures(later, cache, scope, now=65.0) == [[], ["sig-B"]]  # the first expired at 60 s


def test_mode_last_user_turn_goes_back_within_that_turns_tool_loop_only():
    cache = _cache(rules=[{"field": "anthropic_thinking", "mode": "last_user_turn"}])
    scope = Scope("test", "c")
    _think(cache, scope, _chat("weather?"), "sig-A", call="call_1")
    loop = _chat("weather?", ("call", "call_1"))  # the tool result: the same user turn
    assert _signatures(loop, cache, scope) == [["sig-A"]]
    assert _signatures(loop, cache, scope) == [["sig-A"]]  # a retry of it
    next_turn = _chat("weather?", ("call", "call_1"), "thanks")
    assert _signatures(next_turn, cache, scope) == [[]]
    assert _signatures(loop, cache, Scope("other", "c")) == [[]]


def test_mode_last_assistant_turn_goes_back_only_to_the_latest_answer():
    cache = _cache(rules=[{"field": "anthropic_thinking", "mode": "last_assistant_turn"}])
    scope = Scope("test", "c")
    _think(cache, scope, _chat("weather?"), "sig-A", answer="Paris is sunny.")
    assert _signatures(_chat("weather?", "Paris is sunny.", "and Rome?"), cache, scope) == [["sig-A"]]
    _think(cache, scope, _chat("weather?", "Paris is sunny.", "and Rome?"), "sig-B", answer="Rome is sunny.")
    later = _chat("weather?", "Paris is sunny.", "and Rome?", "Rome is sunny.", "thanks")
    assert _signatures(later, cache, scope) == [[], ["sig-B"]]
    assert _signatures(_chat("weather?", "Paris is sunny.", "and Rome?"), cache, scope) == [[]]
    assert _signatures(later, cache, Scope("test", "c2")) == [[], []]


def test_gemini_signatures_go_back_by_turn_in_the_turn_modes():
    from gateway.field_cache import user_turn_of
    from protocols import gemini
    cache = _cache(rules=[{"field": "gemini_thought_signature", "mode": "all"}])
    scope = Scope("test", "c")
    first = _chat("weather?")
    tap = Tap(cache, "gemini", scope, 0.0, user_turn_of(first))
    events = tap.events([ToolCallStart(0, "call_1", "get_weather", extra={"thoughtSignature": "gsig"})])
    tap.close()
    assert events == (ToolCallStart(0, "call_1", "get_weather"),)
    assert cache.store.statistics().entries == 1  # no per_tool_call rule: the turn's entry only
    later = _chat("weather?", ("call", "call_1"), "thanks", "You are welcome.", "bye")
    body = gemini.build_request(inject(later, "gemini", cache, scope, 1.0), "gemini-2.5-sim")
    calls = [p for c in body["contents"] if c["role"] == "model" for p in c["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"] == "gsig"
    other = gemini.build_request(inject(later, "gemini", cache, Scope("other", "c"), 1.0), "gemini-2.5-sim")
    assert all(p.get("thoughtSignature") != "gsig" for c in other["contents"] for p in c["parts"])


def test_the_config_accepts_every_built_mode(tmp_path):
    from gateway.config import parse_config
    rules = [{"field": f, "mode": m}
             for f in ("anthropic_thinking", "gemini_thought_signature", "responses_encrypted_content")
             for m in ("last", "all", "last_user_turn", "last_assistant_turn", "per_tool_call")]
    config = parse_config(_config(tmp_path, rules=rules), env={})
    assert {(r.field, r.mode) for r in config.field_cache.rules} == {(r["field"], r["mode"]) for r in rules}


# ---------------------------------------------------------------- Gemini text answers (``last``)


def test_gemini_last_mode_puts_a_text_answers_signature_back_on_its_first_part():
    from protocols import gemini, openai_chat
    cache = _cache(rules=[{"field": "gemini_thought_signature", "mode": "last"}])
    scope = Scope("test", "c")
    tap = Tap(cache, "gemini", scope, now=0.0)
    shown = tap.events([ReasoningDelta(text="thinking", issuer="gemini"),
                        ReasoningDelta(signature="gsig", issuer="gemini"), TextDelta("Paris is sunny.")])
    tap.close()
    assert not any(isinstance(e, ReasoningDelta) and e.signature for e in shown)

    def chat(answer: str):
        return openai_chat.parse_request({"model": "m", "messages": [
            {"role": "user", "content": "weather?"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "thanks"}]})
    body = gemini.build_request(inject(chat("Paris is sunny."), "gemini", cache, scope, 1.0), "gemini-2.5-sim")
    assert body["contents"][1]["parts"] == [{"text": "Paris is sunny.", "thoughtSignature": "gsig"}]
    other = gemini.build_request(inject(chat("Rome is sunny."), "gemini", cache, scope, 1.0), "gemini-2.5-sim")
    assert "thoughtSignature" not in json.dumps(other)
    stranger = gemini.build_request(inject(chat("Paris is sunny."), "gemini", cache, Scope("other", "c"), 1.0),
                                    "gemini-2.5-sim")
    assert "thoughtSignature" not in json.dumps(stranger)


async def test_a_gemini_text_answers_signature_goes_back_to_gemini(tmp_path, clock):
    """Through the simulator, which refuses any signature it did not make: the next
    turn carries the text answer's own."""
    doc = _config(tmp_path, rules=[{"field": "gemini_thought_signature", "mode": "last"}])
    with trio.fail_after(120):
        async with running_gateway(doc) as gw:
            gw.simulator.key_faults["kc"] = Fault(status=503)  # Gemini answers
            sdk = anthropic.AsyncAnthropic(base_url=gw.url, api_key=DEMO_KEY, max_retries=0)
            try:
                messages = [{"role": "user", "content": "hello"}]
                reply = await sdk.messages.create(model="sonnet", max_tokens=4096, messages=messages,
                                                  thinking=THINKING, extra_headers=SESSION)
                blocks = [b.model_dump(exclude_none=True) for b in reply.content]
                assert [b["type"] for b in blocks] == ["thinking", "text"] and blocks[0]["signature"] == ""
                messages += [{"role": "assistant", "content": blocks}, {"role": "user", "content": "more"}]
                await sdk.messages.create(model="sonnet", max_tokens=4096, messages=messages,
                                          thinking=THINKING, extra_headers=SESSION)
            finally:
                await sdk.close()
            body = gw.simulator.bodies[-1]
            model_parts = _gemini_model_parts(body)
            assert model_parts[0]["text"] == blocks[1]["text"]
            assert gw.simulator.signer.valid("gemini", "The user wants an answer; a tool may help.",
                                             model_parts[0]["thoughtSignature"])
