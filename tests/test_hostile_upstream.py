"""The suite's hostile upstream does what its modes say (spoken to directly, no gateway)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from tests.hostile_upstream import FAMILIES, HostileUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TERMINAL = {"openai_compat": b"[DONE]", "openai": b"response.completed", "anthropic": b"message_stop",
            "gemini": b'"STOP"'}


def call(family: str, stream: bool) -> tuple[str, dict, dict]:
    if family == "gemini":
        path = "/v1beta/models/m:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
        return path, {"contents": []}, {"x-goog-api-key": "AIza-test"}
    path = {"openai_compat": "/v1/chat/completions", "openai": "/v1/responses", "anthropic": "/v1/messages"}[family]
    return path, {**CHAT, "stream": stream}, {"authorization": "Bearer test-key-1234", "x-api-key": "test-key-1234"}


async def serving(nursery: trio.Nursery, mode: str, family: str, **kw) -> tuple[HostileUpstream, httpx.AsyncClient]:
    upstream = HostileUpstream(mode, family, **kw)
    url = await nursery.start(upstream.serve)
    return upstream, httpx.AsyncClient(base_url=url, timeout=10)


@pytest.mark.parametrize("family", FAMILIES)
async def test_echo_key_quotes_the_key_in_its_family_error(family):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            upstream, http = await serving(nursery, "echo_key", family)
            async with http:
                path, body, headers = call(family, False)
                r = await http.post(path, json=body, headers=headers)
                upstream.echo = "mid_stream"
                path, body, headers = call(family, True)
                s = await http.post(path, json=body, headers=headers)
            nursery.cancel_scope.cancel()
    key = upstream.keys[0]
    assert r.status_code in (400, 401) and key in r.json()["error"]["message"] and r.headers["x-echo-key"] == key
    assert s.status_code == 200 and json.dumps(key)[1:-1] in s.text and upstream.requests == 2


@pytest.mark.parametrize("family", FAMILIES)
async def test_endless_after_finish_and_finish_then_open_never_end(family):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            endless, http = await serving(nursery, "endless_after_finish", family)
            path, body, headers = call(family, True)
            async with http, http.stream("POST", path, json=body, headers=headers) as r:
                got = b""
                async for chunk in r.aiter_raw():
                    got += chunk
                    if len(got) > 1_000_000:
                        break
            assert TERMINAL[family] in got and endless.bytes_sent > 1_000_000
            held, http = await serving(nursery, "finish_then_open", family)
            async with http, http.stream("POST", path, json=body, headers=headers) as r:
                chunks = r.aiter_raw()
                got = b""
                while TERMINAL[family] not in got:
                    got += await chunks.__anext__()
                with trio.move_on_after(0.2) as quiet:
                    await chunks.__anext__()
                assert quiet.cancelled_caught  # no more bytes, and no end either
            nursery.cancel_scope.cancel()


async def test_endless_body_garbage_and_huge_headers():
    """(close_idle_early races a plain client's reuse by design; the gateway's pool against
    an upstream that closes idle connections is tested in tests/test_transport_gateway.py.)"""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            endless, http = await serving(nursery, "endless_body", "openai_compat")
            path, body, headers = call("openai_compat", False)
            async with http, http.stream("POST", path, json=body, headers=headers) as r:
                size = 0
                async for chunk in r.aiter_raw():
                    size += len(chunk)
                    if size > 1_000_000:
                        break
            assert size > 1_000_000 and r.headers["content-type"] == "application/json"

            garbage, http = await serving(nursery, "garbage_sse", "anthropic")
            path, body, headers = call("anthropic", True)
            async with http:
                r = await http.post(path, json=body, headers=headers)
            assert r.status_code == 200 and b"message_start" in r.content and b"\xff" in r.content

            huge, http = await serving(nursery, "huge_headers", "openai")
            path, body, headers = call("openai", False)
            async with http:
                with pytest.raises(httpx.RemoteProtocolError):
                    await http.post(path, json=body, headers=headers)
            nursery.cancel_scope.cancel()
