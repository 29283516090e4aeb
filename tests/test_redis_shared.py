"""Two gateway instances on one Redis: a rest one of them begins reaches the other at
once, and credential limits hold across both.

Each instance is a whole gateway (its own embedded simulator upstream, its own state
directory) on the shared backend's Redis. The waits are on what an instance exposes
(its relay's count of rests received), never on time.
"""

from __future__ import annotations

import httpx
import trio

from providers.sim_script import Fault
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.shared_backend import shared_config

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE_S = 60


def redis_config(tmp_path, name: str, dsn: str, url: str, **credential) -> dict:
    doc = shared_config(tmp_path, dsn, name, redis_url=url)
    doc["providers"]["sim"]["credentials"] = [{"id": c, "key": f"k{c}", **credential} for c in "ab"]
    doc["cooldown"] = {"base_s": 30, "max_s": 60, "jitter": 0}
    return doc


async def _chat(client: httpx.AsyncClient) -> httpx.Response:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    return await client.post("/v1/chat/completions", json=body, headers=AUTH)


async def test_a_429_on_one_instance_rests_the_credential_on_the_other(tmp_path, pg_dsn, redis_url):
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(redis_config(tmp_path, "a", pg_dsn, redis_url)) as first, \
                running_gateway(redis_config(tmp_path, "b", pg_dsn, redis_url)) as second:
            relay = second.runtime.redis.rests
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
                first.simulator.key_faults["ka"] = Fault(status=429, retry_after="30")
                assert (await _chat(client)).status_code == 200  # a: 429 -> b
                assert dict(first.simulator.requests_by_key) == {"ka": 1, "kb": 1}
            await relay.wait_received(1)
            async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
                for _ in range(3):
                    assert (await _chat(client)).status_code == 200
                assert dict(second.simulator.requests_by_key) == {"kb": 3}, "the other instance routed around a"
                cooldowns = (await client.get("/admin/cooldowns", headers=ADMIN)).json()["active"]
                assert [(c["credential"], c["reason"]) for c in cooldowns] == [("a", "rate_limited")]
                assert 0 < cooldowns[0]["remaining_s"] <= 30
            assert first.runtime.redis.rests.received == 0, "an instance does not apply its own notice"


async def test_an_instance_that_starts_later_loads_the_rests_still_running(tmp_path, pg_dsn, redis_url):
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(redis_config(tmp_path, "a", pg_dsn, redis_url)) as first:
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
                first.simulator.key_faults["ka"] = Fault(status=429, retry_after="30")
                assert (await _chat(client)).status_code == 200
            async with running_gateway(redis_config(tmp_path, "b", pg_dsn, redis_url)) as second:
                assert second.runtime.redis.rests.received == 1  # loaded before it was ready
                async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
                    assert (await _chat(client)).status_code == 200
                assert dict(second.simulator.requests_by_key) == {"kb": 1}


async def test_a_credential_concurrency_limit_holds_across_instances(tmp_path, pg_dsn, redis_url):
    """One slot per credential across both instances: while a stream holds each, the
    other instance finds both busy."""
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(redis_config(tmp_path, "a", pg_dsn, redis_url, max_concurrency=1)) as first, \
                running_gateway(redis_config(tmp_path, "b", pg_dsn, redis_url, max_concurrency=1)) as second:
            for key in ("ka", "kb"):
                first.simulator.key_faults[key] = Fault(ttfb_stall=30)
            async with httpx.AsyncClient(base_url=first.url, timeout=60) as one, \
                    httpx.AsyncClient(base_url=second.url, timeout=60) as other:
                async with trio.open_nursery() as nursery:
                    for _ in range(2):
                        nursery.start_soon(_chat, one)
                    leases = first.runtime.redis.leases
                    while len(leases.open) < 2:
                        await trio.sleep(0.01)  # both slots taken on the first instance
                    refused = await _chat(other)
                    assert refused.status_code in (429, 503), refused.text
                    assert second.simulator.requests_by_key == {}
                    nursery.cancel_scope.cancel()


def _sample(text: str, name: str) -> float:
    """One sample's value from a scrape (the first line naming it)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


async def test_a_redis_restart_mid_load_keeps_the_gateway_serving(tmp_path, pg_dsn, redis_server, redis_url, caplog):
    doc = redis_config(tmp_path, "a", pg_dsn, redis_url)
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(doc) as gw:
            link = gw.runtime.redis.link
            link.retry_s = 0.05
            statuses: list[int] = []
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

                async def load(requests: int) -> None:
                    for _ in range(requests):
                        statuses.append((await _chat(client)).status_code)

                async with trio.open_nursery() as nursery:
                    for _ in range(4):
                        nursery.start_soon(load, 10)
                    while len(statuses) < 8:
                        await trio.sleep(0.01)  # the load is under way
                    redis_server.stop()
                await link.wait_state(link.state.DOWN)
                assert statuses == [200] * 40, "every request was served while Redis went away"
                during = (await client.get("/metrics", headers=ADMIN)).text
                assert _sample(during, "tollhouse_redis_up") == 0
                assert _sample(during, 'tollhouse_redis_fallbacks_total{use="leases"}') > 0
                unreachable = [r for r in caplog.records if r.name == "tollhouse.redis"
                               and "unreachable" in r.getMessage()]
                assert len(unreachable) == 1, [r.getMessage() for r in unreachable]

                redis_server.start()
                await link.wait_state(link.state.UP)
                await gw.runtime.redis.rests.wait_subscribed(2)  # the cooldown channel again, rests reloaded
                fell_back = link.stats().fallbacks.get("leases", 0)
                for _ in range(3):
                    assert (await _chat(client)).status_code == 200
                assert link.stats().fallbacks.get("leases", 0) == fell_back, "leases are confirmed in Redis again"
                after = (await client.get("/metrics", headers=ADMIN)).text
                assert _sample(after, "tollhouse_redis_up") == 1
                assert redis_url.split("@")[-1] not in after


async def test_a_key_limited_to_n_per_window_across_four_instances_admits_n(tmp_path, pg_dsn, redis_url):
    """The LiteLLM failure (N per minute across 4 workers lets 4N in), in a 2 s window."""
    limit, window_s = 5, 2.0
    docs = []
    for name in "abcd":
        doc = redis_config(tmp_path, name, pg_dsn, redis_url)
        doc["keys"][0].update(requests_per_minute=limit, requests_window_s=window_s)
        docs.append(doc)
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(docs[0]) as a, running_gateway(docs[1]) as b, \
                running_gateway(docs[2]) as c, running_gateway(docs[3]) as d:
            clients = [httpx.AsyncClient(base_url=gw.url, timeout=30) for gw in (a, b, c, d)]
            try:
                async def burst() -> list[httpx.Response]:
                    answers: list[httpx.Response] = []

                    async def one(i: int) -> None:
                        answers.append(await _chat(clients[i % 4]))

                    async with trio.open_nursery() as nursery:
                        for i in range(8 * limit):
                            nursery.start_soon(one, i)
                    return answers

                first = await burst()
                assert sorted(r.status_code for r in first) == [200] * limit + [429] * (7 * limit)
                waits = [float(r.headers["retry-after"]) for r in first if r.status_code == 429]
                assert all(0 < w <= window_s + 1 for w in waits)  # Retry-After is whole seconds, rounded up
                await trio.sleep(window_s)  # Redis's window, on Redis's clock: the first burst has left it
                second = await burst()
                assert sorted(r.status_code for r in second) == [200] * limit + [429] * (7 * limit)
            finally:
                for client in clients:
                    await client.aclose()


async def test_a_provider_wide_trip_on_one_instance_reroutes_the_other(tmp_path, pg_dsn, redis_url):
    """Server errors from every credential of a provider trip it on the first instance;
    the second moves that provider to the back of its plans at once."""
    docs = []
    for name in "ab":
        doc = redis_config(tmp_path, name, pg_dsn, redis_url)
        doc["providers"]["sim"]["credentials"] = [{"id": c, "key": f"k{c}"} for c in "abc"]
        doc["providers"]["backup"] = {"family": "simulator", "embedded": True, "protocol": "openai_chat",
                                      "credentials": [{"id": "z", "key": "kz"}]}
        doc["pricing"]["backup/*"] = {"input": "1.00", "output": "2.00"}
        doc["models"]["demo"] = {"targets": ["sim/sim-chat", "backup/sim-chat"]}
        docs.append(doc)
    with trio.fail_after(DEADLINE_S):
        async with running_gateway(docs[0]) as first, running_gateway(docs[1]) as second:
            for key in ("ka", "kb", "kc"):
                first.simulator.key_faults[key] = Fault(status=503)
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
                assert (await _chat(client)).status_code == 200  # a, b, c: 503 -> backup
            assert dict(first.simulator.requests_by_key) == {"ka": 1, "kb": 1, "kc": 1, "kz": 1}
            await second.runtime.redis.rests.wait_received(4)  # three credentials' rests and the provider's
            async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
                assert (await _chat(client)).status_code == 200
                assert dict(second.simulator.requests_by_key) == {"kz": 1}, "the tripped provider went to the back"
                scopes = {c["scope"] for c in (await client.get("/admin/cooldowns", headers=ADMIN)).json()["active"]}
                assert scopes == {"credential", "provider"}
