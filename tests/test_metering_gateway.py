"""The meter through the real gateway: concurrency against credit, drain, admin keys."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


async def test_concurrent_requests_never_overspend_the_balance(tmp_path):
    doc = base_config(tmp_path)
    doc["keys"] = [{"name": "tight", "key": "th-tight", "credit_usd": "0.25"}]
    doc["simulator"] = {"tokens_per_second": 100}
    doc["default_hold_output_tokens"] = 4096
    statuses: list[int] = []
    with trio.fail_after(60):
        async with running_gateway(doc) as gw:
            limits = httpx.Limits(max_connections=200)
            async with httpx.AsyncClient(base_url=gw.url, limits=limits, timeout=30) as client:
                async def one() -> None:
                    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                          headers={"authorization": "Bearer th-tight"})
                    statuses.append(r.status_code)
                    if r.status_code == 402:
                        assert r.json()["error"]["type"] == "insufficient_quota"

                async with trio.open_nursery() as nursery:
                    for _ in range(200):
                        nursery.start_soon(one)
                reservations = (await client.get("/admin/reservations", headers=ADMIN)).json()
            entries = gw.ledger_entries()
    assert sorted(set(statuses)) == [200, 402], "some served, some refused for credit"
    assert len(statuses) == 200
    assert reservations["reservations"] == []
    charged = sum(e["amount_micro"] for e in entries)
    overruns = sum(e["amount_micro"] for e in entries if e["kind"] == "overrun")
    assert charged <= 250_000 + overruns
    assert len([e for e in entries if e["kind"] == "charge"]) == statuses.count(200)


async def test_drain_policy_reads_on_to_learn_the_exact_usage(tmp_path):
    doc = base_config(tmp_path)
    doc["simulator"] = {"tokens_per_second": 200}
    doc["streaming"] = {"on_disconnect": "drain", "drain_timeout_s": 10, "ttfb_timeout_s": 5, "stall_timeout_s": 5}
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                body = {**CHAT, "stream": True}
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {DEMO_KEY}"}) as r:
                    assert r.status_code == 200
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "client_cancel"
            assert entry["provenance"] == "reported", "the drained stream's final usage was seen"
            assert entry["output"] == 12
            await gw.simulator.wait_idle()


async def test_admin_keys_lifecycle(config_doc):
    with trio.fail_after(20):
        async with running_gateway(config_doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                r = await client.post("/admin/keys", headers=ADMIN, json={"name": "team", "credit_usd": "1.00"})
                assert r.status_code == 201
                secret = r.json()["key"]
                listing = (await client.get("/admin/keys", headers=ADMIN)).text
                assert secret not in listing and DEMO_KEY not in listing
                ok = await client.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"})
                assert ok.status_code == 200
                r = await client.patch("/admin/keys/team", headers=ADMIN, json={"disabled": True})
                assert r.json()["disabled"] is True
                refused = await client.post("/v1/chat/completions", json=CHAT,
                                            headers={"authorization": f"Bearer {secret}"})
                assert refused.status_code == 401
                usage = (await client.get("/admin/usage", headers=ADMIN)).json()
                assert usage["by"]["key_name"]["team"]["requests"] == 1
                assert usage["by"]["provider"]["sim"]["output"] == 12


async def test_drain_is_bounded_in_time(tmp_path):
    doc = base_config(tmp_path)
    doc["simulator"] = {"tokens_per_second": 10}  # the stream needs well over a second
    doc["streaming"] = {"on_disconnect": "drain", "drain_timeout_s": 0.2, "ttfb_timeout_s": 5, "stall_timeout_s": 5}
    with trio.fail_after(20):
        async with running_gateway(doc) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                         headers={"authorization": f"Bearer {DEMO_KEY}"}) as r:
                    assert r.status_code == 200
            await gw.usage_actor.wait_settles(1)
            [entry] = gw.ledger_entries()
            assert (entry["reason"], entry["provenance"]) == ("client_cancel", "estimated")
            assert gw.simulator.streams_sent == 0, "the drain gave up before the upstream finished"
            await gw.simulator.wait_idle()
