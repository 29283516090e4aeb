"""The ``prompt_cache_key`` rule: one stable key per conversation for OpenAI upstreams.

OpenAI's prompt cache routes by ``prompt_cache_key``; a conversation the gateway
rebuilds (translated, chained, failed over) keeps hitting the same cache only if every
request of it carries the same key. Checked on what the simulator's upstreams were sent.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from gateway.config import ConfigError, parse_config
from tests.conftest import DEMO_KEY, base_config, running_gateway

OTHER_KEY = "th-other-key"
RULE = {"field": "prompt_cache_key", "mode": "all"}


def _config(tmp_path, rules=None) -> dict:
    doc = base_config(tmp_path)
    doc["providers"] = {
        "simc": {"family": "simulator", "embedded": True, "protocol": "openai_chat"},
        "simr": {"family": "simulator", "embedded": True, "protocol": "openai_responses"},
        "sima": {"family": "simulator", "embedded": True, "protocol": "anthropic"},
    }
    doc["models"] = {"chat": {"targets": ["simc/sim-chat"]}, "responses": {"targets": ["simr/sim-resp"]},
                     "claude": {"targets": ["sima/claude-sim"]}}
    doc["pricing"] = {f"{p}/*": {"input": "1.00", "output": "2.00"} for p in doc["providers"]}
    doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "100.00"},
                   {"name": "other", "key": OTHER_KEY, "credit_usd": "100.00"}]
    if rules is not None:
        doc["field_cache"] = {"rules": rules}
    return doc


def _chat(model: str, *texts: str, **fields) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"model": model, "messages": messages, **fields}


def _responses(model: str, *texts: str, **fields) -> dict:
    items = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return {"model": model, "input": items, **fields}


async def _send(http: httpx.AsyncClient, gw, path: str, body: dict, key: str = DEMO_KEY) -> dict:
    """Post ``body`` and return what the upstream was sent for it."""
    mark = len(gw.simulator.bodies)
    r = await http.post(gw.url + path, json=body, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    sent = gw.simulator.bodies[mark:]
    assert len(sent) == 1
    return sent[0]


async def test_a_conversation_keeps_one_derived_key_across_protocols_and_keys_differ(tmp_path):
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path, rules=[RULE])) as gw, httpx.AsyncClient() as http:
            first = await _send(http, gw, "/v1/chat/completions", _chat("responses", "Hi, I am Ada."))
            key = first["prompt_cache_key"]
            assert key.startswith("th-") and "test" not in key and DEMO_KEY not in key
            again = await _send(http, gw, "/v1/chat/completions",
                                _chat("responses", "Hi, I am Ada.", "Hello Ada.", "What is my name?"))
            assert again["prompt_cache_key"] == key
            same_protocol = await _send(http, gw, "/v1/chat/completions", _chat("chat", "Hi, I am Ada."))
            assert same_protocol["prompt_cache_key"] == key
            other_key = await _send(http, gw, "/v1/chat/completions", _chat("responses", "Hi, I am Ada."),
                                    key=OTHER_KEY)
            assert other_key["prompt_cache_key"] != key
            other_talk = await _send(http, gw, "/v1/chat/completions", _chat("responses", "Hi, I am Bob."))
            assert other_talk["prompt_cache_key"] != key
            from_responses = await _send(http, gw, "/v1/responses", _responses("chat", "Hi, I am Bob."))
            assert from_responses["prompt_cache_key"] == other_talk["prompt_cache_key"]
            anthropic = await _send(http, gw, "/v1/chat/completions", _chat("claude", "Hi, I am Ada."))
            assert "prompt_cache_key" not in anthropic


async def test_the_clients_own_key_is_never_replaced(tmp_path):
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path, rules=[RULE])) as gw, httpx.AsyncClient() as http:
            for path, body in (("/v1/chat/completions", _chat("responses", "Hi", prompt_cache_key="mine-1")),
                               ("/v1/chat/completions", _chat("chat", "Hi", prompt_cache_key="mine-1")),
                               ("/v1/responses", _responses("chat", "Hi", prompt_cache_key="mine-1")),
                               ("/v1/responses", _responses("responses", "Hi", prompt_cache_key="mine-1"))):
                assert (await _send(http, gw, path, body))["prompt_cache_key"] == "mine-1", (path, body["model"])


async def test_without_the_rule_no_key_is_added(tmp_path):
    with trio.fail_after(60):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient() as http:
            for path, body in (("/v1/chat/completions", _chat("responses", "Hi")),
                               ("/v1/chat/completions", _chat("chat", "Hi")),
                               ("/v1/responses", _responses("chat", "Hi"))):
                assert "prompt_cache_key" not in await _send(http, gw, path, body)


def test_the_rule_has_one_mode(tmp_path):
    parse_config(_config(tmp_path, rules=[RULE]), env={})
    with pytest.raises(ConfigError) as err:
        parse_config(_config(tmp_path, rules=[{"field": "prompt_cache_key", "mode": "per_tool_call"}]), env={})
    assert "field_cache.rules[0].mode" in str(err.value)
