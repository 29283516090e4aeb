"""A credential's lease lasts as long as its stream: ``max_concurrency`` counts streams
that are still open, so a request that comes while a credential is at its limit goes
to another credential, or is refused when none is free."""

from __future__ import annotations

from contextlib import AsyncExitStack, aclosing

import httpx
import trio
import trio.testing

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    doc["providers"]["sim"]["credentials"] = [{"id": c, "key": f"k{c}", "max_concurrency": 1} for c in "ab"]
    doc["models"]["stalls"] = {"targets": ["sim/sim-chat+stall_after=2"]}  # two events, then silence
    return doc


def _body(model: str, stream: bool) -> dict:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def _in_flight(client: httpx.AsyncClient) -> dict[str, int]:
    pool = (await client.get("/admin/credentials", headers=ADMIN)).json()["sim"]
    return {c["id"]: c["in_flight"] for c in pool}


async def _open_stalled_stream(stack: AsyncExitStack, client: httpx.AsyncClient) -> None:
    """A stream that has begun (its first bytes read) and that the upstream keeps open."""
    response = await stack.enter_async_context(
        client.stream("POST", "/v1/chat/completions", json=_body("stalls", True), headers=AUTH))
    assert response.status_code == 200
    chunks = await stack.enter_async_context(aclosing(response.aiter_bytes()))
    async for chunk in chunks:
        assert chunk
        break


async def test_an_open_stream_holds_its_credential_until_it_ends(tmp_path):
    with trio.fail_after(30):
        async with running_gateway(_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            sim = gw.simulator
            async with AsyncExitStack() as first:
                await _open_stalled_stream(first, client)
                [busy_key] = sim.requests_by_key
                busy = busy_key[1:]
                assert await _in_flight(client) == {"a": 0, "b": 0, busy: 1}

                # a request meanwhile is served on the other credential
                r = await client.post("/v1/chat/completions", json=_body("demo", False), headers=AUTH)
                assert r.status_code == 200
                other = ({"a", "b"} - {busy}).pop()
                assert sim.requests_by_key == {busy_key: 1, f"k{other}": 1}

                async with AsyncExitStack() as second:
                    await _open_stalled_stream(second, client)
                    assert await _in_flight(client) == {"a": 1, "b": 1}
                    # both at their limit: refused at once, and no upstream call is made
                    r = await client.post("/v1/chat/completions", json=_body("demo", False), headers=AUTH)
                    assert r.status_code == 503
                    assert "busy" in r.json()["error"]["message"]
                    assert sum(sim.requests_by_key.values()) == 3
            with trio.fail_after(2):
                await sim.wait_idle()
            with trio.fail_after(10):  # a cut stream's charge is counted by the tokenizer, loaded on first use
                await gw.usage_actor.wait_settles(4)
            await trio.testing.wait_all_tasks_blocked()  # the releases told after the settlements
            assert await _in_flight(client) == {"a": 0, "b": 0}
            r = await client.post("/v1/chat/completions", json=_body("demo", False), headers=AUTH)
            assert r.status_code == 200
