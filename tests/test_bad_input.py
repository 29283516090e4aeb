"""Bad input gets the OpenAI error shape, the right status, and charges nothing."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

GOOD = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def _no_catch_all(tmp_path):
    doc = base_config(tmp_path)
    del doc["models"]["*"]
    doc["server"]["max_body_bytes"] = 2048
    return doc


CASES = [
    ("malformed json", b"{not json", DEMO_KEY, 400, "invalid_request_error"),
    ("not an object", b"[1, 2]", DEMO_KEY, 400, "invalid_request_error"),
    ("missing messages", b'{"model": "demo"}', DEMO_KEY, 400, "invalid_request_error"),
    ("messages wrong type", b'{"model": "demo", "messages": "hi"}', DEMO_KEY, 400, "invalid_request_error"),
    ("stream wrong type", b'{"model": "demo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
     DEMO_KEY, 400, "invalid_request_error"),
    ("unknown model", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', DEMO_KEY, 404,
     "not_found_error"),
    ("missing key", b'{"model": "demo", "messages": [{"role": "user", "content": "x"}]}', None, 401,
     "authentication_error"),
    ("wrong key", b'{"model": "demo", "messages": [{"role": "user", "content": "x"}]}', "th-wrong", 401,
     "authentication_error"),
    ("malformed json, wrong key", b"{not json", "th-wrong", 401, "authentication_error"),
    ("unknown model, wrong key", b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', "th-wrong",
     401, "authentication_error"),
    ("model name too long", b'{"model": "' + b"m" * 300 + b'", "messages": [{"role": "user", "content": "x"}]}',
     DEMO_KEY, 400, "invalid_request_error"),
    ("oversized", b'{"model": "demo", "messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}',
     DEMO_KEY, 413, "request_too_large"),
]


@pytest.mark.parametrize("name,body,key,status,kind", CASES, ids=[c[0] for c in CASES])
async def test_bad_request_is_refused_in_openai_shape(tmp_path, name, body, key, status, kind):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    with trio.fail_after(10):
        async with running_gateway(_no_catch_all(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                r = await client.post("/v1/chat/completions", content=body, headers=headers)
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert error["type"] == kind and error["message"]
            assert gw.ledger_entries() == []
            assert gw.simulator.requests == 0
            assert DEMO_KEY not in r.text


async def test_wrong_method_and_unknown_path_answer_in_json(tmp_path):
    with trio.fail_after(10):
        async with running_gateway(_no_catch_all(tmp_path)) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                r = await client.get("/v1/chat/completions")
                assert r.status_code == 405 and "error" in r.json()
                r = await client.get("/v1/nothing-here")
                assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("path,headers,shape", [
    ("//v1//models", {"authorization": f"Bearer {DEMO_KEY}"}, "openai"),
    ("/v1//models", {"authorization": f"Bearer {DEMO_KEY}"}, "openai"),
    ("/v1beta//models", {"x-goog-api-key": DEMO_KEY}, "gemini"),
    ("/admin/keys//test", {"authorization": f"Bearer {ADMIN_TOKEN}"}, "openai"),
])
async def test_a_path_with_doubled_slashes_is_a_json_404_not_a_redirect(config_doc, path, headers, shape):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.patch(httpx.URL(gw.url).copy_with(raw_path=path.encode()), headers=headers) \
                if path.startswith("/admin") else \
                await client.get(httpx.URL(gw.url).copy_with(raw_path=path.encode()), headers=headers)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json"), r.text[:200]
    error = r.json()["error"]
    assert error["status"] == "NOT_FOUND" if shape == "gemini" else error["type"] == "not_found_error"
    assert "location" not in r.headers


async def test_admin_requires_token(config_doc):
    with trio.fail_after(10):
        async with running_gateway(config_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                assert (await client.get("/admin/actors")).status_code == 401
                r = await client.get("/admin/actors", headers={"authorization": f"Bearer {DEMO_KEY}"})
                assert r.status_code == 401
