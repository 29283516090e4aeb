"""Through the whole gateway: an upstream that closed its idle keep-alive connections
costs nothing -- the next requests go out on fresh connections, none is a 502, no
credential rests."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.raw_upstream import RawUpstream, chat_completion

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "raw", "messages": [{"role": "user", "content": "hi"}]}


def _config(tmp_path, upstream: RawUpstream) -> dict:
    doc = base_config(tmp_path)
    doc["providers"] = {"raw": {"family": "openai_compat", "base_url": f"{upstream.url}/v1",
                                "credentials": [{"id": "a", "key": "ka"}, {"id": "b", "key": "kb"}]}}
    doc["models"] = {"raw": {"targets": ["raw/raw"]}}
    doc["pricing"] = {"raw/raw": {"input": "1.00", "output": "2.00"}}
    return doc


async def _chats(client: httpx.AsyncClient, n: int) -> list[int]:
    statuses: list[int] = []

    async def one() -> None:
        statuses.append((await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return statuses


async def test_requests_after_the_upstream_closed_its_idle_connections_all_succeed(tmp_path):
    upstream = RawUpstream(chat_completion)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve)
            async with running_gateway(_config(tmp_path, upstream)) as gw:
                pool = gw.runtime.providers["raw"].client
                async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
                    assert await _chats(client, 5) == [200] * 5
                    warm = pool.statistics().idle
                    assert warm >= 1
                    assert await upstream.close_idle() == warm
                    for conn in list(pool._idle):  # the FINs have reached the gateway's host
                        await trio.lowlevel.wait_readable(conn.sock)
                    connections_before = len(upstream.requests)

                    assert await _chats(client, 5) == [200] * 5, "concurrently"
                    assert await upstream.close_idle() >= 1
                    for conn in list(pool._idle):
                        await trio.lowlevel.wait_readable(conn.sock)
                    for _ in range(5):
                        assert await _chats(client, 1) == [200], "one at a time"

                    assert sum(upstream.requests) == 15, "every request reached the upstream once"
                    assert len(upstream.requests) > connections_before, "on fresh connections"
                    assert pool.statistics().discarded >= warm
                    cooldowns = (await client.get("/admin/cooldowns", headers=ADMIN)).json()
                    assert cooldowns["active"] == [] and cooldowns["history"] == {}
            nursery.cancel_scope.cancel()
