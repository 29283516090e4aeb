"""``/v1/models`` lists what the caller's key may use, in the caller's protocol."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import DEMO_KEY, running_gateway

OPENAI = lambda key: {"authorization": f"Bearer {key}"}  # noqa: E731
ANTHROPIC = lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"}  # noqa: E731
GEMINI = lambda key: {"x-goog-api-key": key}  # noqa: E731


def _config(config_doc: dict) -> dict:
    config_doc["models"]["other"] = {"targets": ["sim/sim-other"]}
    config_doc["aliases"] = {"fast": "demo"}
    config_doc["keys"] += [
        {"name": "narrow", "key": "th-narrow", "credit_usd": "1", "models": ["fast", "*"]},
        {"name": "direct", "key": "th-direct", "credit_usd": "1", "models": ["sim/sim-chat", "demo", "demo"]},
    ]
    return config_doc


def _ids(doc: dict) -> list[str]:
    return [m.get("id") or m["name"].removeprefix("models/") for m in doc.get("data", doc.get("models", []))]


async def test_each_key_sees_only_the_models_it_may_use(config_doc):
    with trio.fail_after(30):
        async with running_gateway(_config(config_doc)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            for shape, path in ((OPENAI, "/v1/models"), (ANTHROPIC, "/v1/models"), (GEMINI, "/v1beta/models")):
                listed = {}
                for key in (DEMO_KEY, "th-narrow", "th-direct"):
                    r = await client.get(path, headers=shape(key))
                    assert r.status_code == 200, r.text
                    listed[key] = _ids(r.json())
                assert listed == {DEMO_KEY: ["demo", "fast", "other"], "th-narrow": ["fast"],
                                  "th-direct": ["demo", "sim/sim-chat"]}, shape
            # what is listed is what is served
            r = await client.post("/v1/chat/completions", headers=OPENAI("th-narrow"),
                                  json={"model": "other", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 403


async def test_an_unknown_key_is_a_401_in_the_callers_shape(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.get("/v1/models", headers=OPENAI("th-nobody"))
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = await client.get("/v1/models", headers=ANTHROPIC("th-nobody"))
            assert r.status_code == 401 and r.json()["type"] == "error"
            assert r.json()["error"]["type"] == "authentication_error"
            r = await client.get("/v1beta/models", headers=GEMINI("th-nobody"))
            assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
            r = await client.get("/v1/models")
            assert r.status_code == 401
