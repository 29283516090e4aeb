"""count_tokens forwarded: each client protocol's counting door against each upstream
family. Anthropic and Gemini targets count with their own endpoint (the simulator's
word rule, which the gateway's BPE estimate does not match), the request translated to
that family; Chat and Responses targets, a provider set to ``estimate`` and a failed
upstream get the estimate. The header says which; nothing is ever charged."""

from __future__ import annotations

import httpx
import pytest
import trio

from protocols import anthropic_messages, gemini
from protocols.tokens import estimate_request_tokens
from providers.sim_count import sim_tokens
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

ANTHROPIC_DOOR = ("/v1/messages/count_tokens", {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"})
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
PROMPT = "count these few plain words please, tokenizers differ on punctuation!!! and on 12345678"
SYSTEM = "You are a careful assistant."


def _config(tmp_path, **settings) -> dict:
    doc = base_config(tmp_path)
    doc["providers"] = {
        "sima": {"family": "simulator", "embedded": True, "protocol": "anthropic", **settings},
        "simg": {"family": "simulator", "embedded": True, "protocol": "gemini", **settings},
        "simc": {"family": "simulator", "embedded": True, "protocol": "openai_chat", **settings},
        "simr": {"family": "simulator", "embedded": True, "protocol": "openai_responses", **settings},
    }
    doc["models"] = {"anthropic": {"targets": ["sima/claude-sim"]}, "gemini": {"targets": ["simg/gemini-sim"]},
                     "chat": {"targets": ["simc/sim-chat"]}, "responses": {"targets": ["simr/sim-resp"]},
                     "broken": {"targets": ["sima/claude-sim+status=500", "simg/gemini-sim"]}}
    doc["pricing"] = {f"{p}/*": {"input": "1.00", "output": "2.00"} for p in doc["providers"]}
    return doc


def _anthropic_body(model: str) -> dict:
    return {"model": model, "system": SYSTEM, "messages": [{"role": "user", "content": PROMPT}]}


def _gemini_body() -> dict:
    return {"systemInstruction": {"parts": [{"text": SYSTEM}]},
            "contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}


def _door(client_protocol: str, model: str) -> tuple[str, dict, dict]:
    if client_protocol == "anthropic":
        return ANTHROPIC_DOOR[0], ANTHROPIC_DOOR[1], _anthropic_body(model)
    return f"/v1beta/models/{model}:countTokens", {"x-goog-api-key": DEMO_KEY}, _gemini_body()


def _unified(client_protocol: str, model: str):
    if client_protocol == "anthropic":
        return anthropic_messages.parse_request(_anthropic_body(model), require_max_tokens=False)
    return gemini.parse_request(_gemini_body(), model=model, stream=False)


def _count(client_protocol: str, doc: dict) -> int:
    return doc["input_tokens"] if client_protocol == "anthropic" else doc["totalTokens"]


def test_the_simulators_count_is_not_the_gateways_estimate():
    req = _unified("anthropic", "m")
    assert sim_tokens(req) != estimate_request_tokens(req)  # so the tests below can tell who counted


@pytest.mark.parametrize("client_protocol", ["anthropic", "gemini"])
@pytest.mark.parametrize("model, counter", [("anthropic", "anthropic"), ("gemini", "gemini"),
                                            ("chat", None), ("responses", None)])
async def test_a_count_is_the_upstreams_where_its_family_counts(tmp_path, client_protocol, model, counter):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            keys_before = (await client.get("/admin/keys", headers=ADMIN)).json()
            path, headers, body = _door(client_protocol, model)
            r = await client.post(path, headers=headers, json=body)
            assert r.status_code == 200, r.text
            req = _unified(client_protocol, model)
            if counter is None:
                assert r.headers["x-tollhouse-token-count"] == "estimate"
                assert _count(client_protocol, r.json()) == estimate_request_tokens(req)
                assert gw.simulator.counts == []
            else:
                assert r.headers["x-tollhouse-token-count"] == "upstream"
                assert r.headers["x-tollhouse-target"].startswith({"anthropic": "sima/", "gemini": "simg/"}[counter])
                assert _count(client_protocol, r.json()) == sim_tokens(req)
                [(protocol, sent)] = gw.simulator.counts
                assert protocol == counter  # translated to the counting family's own request
                if counter == "anthropic":
                    assert sent["model"] == "claude-sim" and sent["system"] == SYSTEM and "max_tokens" not in sent
                else:
                    inner = sent["generateContentRequest"]
                    assert inner["model"] == "models/gemini-sim"
                    assert inner["systemInstruction"]["parts"] == [{"text": SYSTEM}]
            assert gw.ledger_entries() == [], "counting is never metered"
            assert (await client.get("/admin/keys", headers=ADMIN)).json() == keys_before


async def test_a_failed_upstream_count_or_the_estimate_setting_gives_the_estimate(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            path, headers, body = _door("anthropic", "broken")
            r = await client.post(path, headers=headers, json=body)
            assert r.status_code == 200 and r.headers["x-tollhouse-token-count"] == "estimate"
            assert r.json()["input_tokens"] == estimate_request_tokens(_unified("anthropic", "broken"))
            assert len(gw.simulator.counts) == 1, "only the plan's first target is asked"
            cooldowns = (await client.get("/admin/cooldowns", headers=ADMIN)).json()
            assert cooldowns["active"] == [], "a failed count rests no credential"
            assert gw.ledger_entries() == []
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path, count_tokens="estimate")) as gw, \
                httpx.AsyncClient(base_url=gw.url) as client:
            for protocol, model in (("anthropic", "anthropic"), ("gemini", "gemini")):
                path, headers, body = _door(protocol, model)
                r = await client.post(path, headers=headers, json=body)
                assert r.status_code == 200 and r.headers["x-tollhouse-token-count"] == "estimate"
            assert gw.simulator.counts == []


async def test_an_upstream_count_includes_the_targets_system_prefix(tmp_path):
    doc = _config(tmp_path)
    doc["providers"]["sima"]["adapters"] = [{"name": "system_prefix", "text": "Always answer in French."}]
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            path, headers, body = _door("gemini", "anthropic")
            r = await client.post(path, headers=headers, json=body)
            assert r.status_code == 200 and r.headers["x-tollhouse-token-count"] == "upstream"
            [(_, sent)] = gw.simulator.counts
            assert sent["system"] == f"Always answer in French.\n\n{SYSTEM}"
            assert r.json()["totalTokens"] == sim_tokens(_unified("gemini", "anthropic")) + 4


async def test_a_bad_count_request_is_refused_before_any_upstream_count(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post(ANTHROPIC_DOOR[0], headers=ANTHROPIC_DOOR[1], json={"model": "anthropic"})
            assert r.status_code == 400 and r.json()["type"] == "error"
            r = await client.post(ANTHROPIC_DOOR[0], headers={"x-api-key": "th-wrong"}, json=_anthropic_body("anthropic"))
            assert r.status_code == 401
            assert gw.simulator.counts == []


async def test_a_key_limited_to_other_models_gets_the_estimate_not_that_upstreams_count(tmp_path):
    doc = _config(tmp_path)
    doc["keys"] = [{"name": "chat-only", "key": DEMO_KEY, "credit_usd": "1.00", "models": ["chat"]}]
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            path, headers, body = _door("anthropic", "anthropic")
            r = await client.post(path, headers=headers, json=body)
            assert r.status_code == 200 and r.headers["x-tollhouse-token-count"] == "estimate"
            assert gw.simulator.counts == []


async def test_a_count_asks_the_meter_once(tmp_path):
    """The key is checked and its model permission read in one ask; a stranger's bad
    body is still a 401, a known key's bad body a 400."""
    doc = _config(tmp_path)
    with trio.fail_after(20):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            made = await client.post("/admin/keys", headers=ADMIN, json={"name": "off", "credit_usd": "1.00"})
            off = made.json()["key"]
            assert (await client.patch("/admin/keys/off", headers=ADMIN, json={"disabled": True})).status_code == 200
            meter = gw.usage_actor
            for model in ("anthropic", "chat"):
                before = meter.handled
                path, headers, body = _door("anthropic", model)
                r = await client.post(path, headers=headers, json=body)
                assert r.status_code == 200
                assert meter.handled == before + 1, model
            r = await client.post(ANTHROPIC_DOOR[0], headers={**ANTHROPIC_DOOR[1], "x-api-key": off},
                                  json={"model": "anthropic"})
            assert r.status_code == 401 and "disabled" in r.text
            r = await client.post(ANTHROPIC_DOOR[0], headers=ANTHROPIC_DOOR[1], json={"model": "anthropic"})
            assert r.status_code == 400
