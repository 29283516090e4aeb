"""Credential pools, cooldowns and failover, through real sockets in virtual time.

The gateway and the simulator run in the test's own trio run, so the actors' clock is
the test's MockClock: ``trio.sleep(30)`` here is 30 virtual seconds. The clock jumps
only after 50 ms with every task idle, so loopback I/O never lets a deadline fire
early.
"""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from providers.sim_script import Fault
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def clock():
    return trio.testing.MockClock(autojump_threshold=0.05)


def _config(tmp_path, **extra):
    doc = base_config(tmp_path)
    doc["providers"]["sim"]["credentials"] = [{"id": c, "key": f"k{c}"} for c in "abc"]
    doc["providers"]["backup"] = {"family": "simulator", "embedded": True, "protocol": "openai_chat",
                                  "credentials": [{"id": "z", "key": "kz"}]}
    doc["pricing"]["backup/*"] = {"input": "1.00", "output": "2.00"}
    doc["streaming"] = {"ttfb_timeout_s": 600, "stall_timeout_s": 600}
    doc["cooldown"] = {"base_s": 5, "max_s": 60, "jitter": 0}
    doc.update(extra)
    return doc


async def _chat(client: httpx.AsyncClient, model: str = "demo", stream: bool = False) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return await client.post("/v1/chat/completions", json=body, headers=AUTH)


def _used(gw) -> dict:
    return dict(gw.simulator.requests_by_key)


async def test_rate_limited_key_rests_exactly_retry_after_then_rejoins(tmp_path, clock):
    async with running_gateway(_config(tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            gw.simulator.key_faults["kb"] = Fault(status=429, retry_after="30")
            for _ in range(3):  # a, b (429 -> fails over to c), then a again
                assert (await _chat(client)).status_code == 200
            assert _used(gw) == {"ka": 2, "kb": 1, "kc": 1}
            start = trio.current_time()
            gw.simulator.key_faults.clear()
            for _ in range(4):
                assert (await _chat(client)).status_code == 200
            assert _used(gw)["kb"] == 1, "the limited key was not tried while resting"
            await trio.sleep_until(start + 29.999)
            assert (await _chat(client)).status_code == 200
            assert _used(gw)["kb"] == 1
            await trio.sleep_until(start + 30)
            assert (await _chat(client)).status_code == 200
            assert _used(gw)["kb"] == 2, "the key rejoined after exactly 30 s"
            cooldowns = (await client.get("/admin/cooldowns", headers=ADMIN)).json()
            [event] = cooldowns["history"]["sim/sim-chat"]
            assert (event["credential"], event["kind"], event["status"]) == ("b", "rate_limited", 429)


async def test_unauthorised_key_is_dead_until_re_enabled(tmp_path, clock):
    async with running_gateway(_config(tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            gw.simulator.key_faults["ka"] = Fault(status=401)
            assert (await _chat(client)).status_code == 200  # a: 401 -> b
            gw.simulator.key_faults.clear()
            await trio.sleep(3600)
            for _ in range(6):
                assert (await _chat(client)).status_code == 200
            assert _used(gw)["ka"] == 1, "a dead key is never used again"
            pools = (await client.get("/admin/credentials", headers=ADMIN)).json()
            a = next(c for c in pools["sim"] if c["id"] == "a")
            assert a["state"] == "dead" and "ka" not in str(pools)
            r = await client.post("/admin/credentials/sim/a/enable", headers=ADMIN)
            assert r.status_code == 200 and r.json()["state"] == "ready"
            for _ in range(3):
                assert (await _chat(client)).status_code == 200
            assert _used(gw)["ka"] == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_503_on_every_key_fails_over_to_the_next_target(tmp_path, clock, stream):
    doc = _config(tmp_path)
    doc["models"]["group"] = {"targets": ["sim/sim-chat", "backup/sim-chat"]}
    async with running_gateway(doc) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            for key in ("ka", "kb", "kc"):
                gw.simulator.key_faults[key] = Fault(status=503)
            r = await _chat(client, "group", stream=stream)
            assert r.status_code == 200
            assert r.headers["x-tollhouse-target"] == "backup/sim-chat"
            assert _used(gw) == {"ka": 1, "kb": 1, "kc": 1, "kz": 1}
            [entry] = gw.ledger_entries()
            assert (entry["provider"], entry["credential"], entry["reason"]) == ("backup", "z", "end")


async def test_failure_after_first_byte_is_not_retried(tmp_path, clock):
    doc = _config(tmp_path)
    doc["models"]["group"] = {"targets": ["sim/sim-chat+error_after=4", "backup/sim-chat"]}
    async with running_gateway(doc) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            r = await _chat(client, "group", stream=True)
            assert r.status_code == 200
            assert '"error"' in r.text.strip().split("\n\n")[-1]
            assert gw.simulator.requests == 1, "no second upstream call after bytes reached the client"
            [entry] = gw.ledger_entries()
            assert entry["reason"] == "upstream_error"
            cooldowns = (await client.get("/admin/cooldowns", headers=ADMIN)).json()
            assert cooldowns["history"]["sim/sim-chat+error_after=4"][0]["kind"] == "server_error"


async def test_every_target_resting_past_the_budget_fails_fast_with_retry_after(tmp_path, clock):
    doc = _config(tmp_path, routing={"budget_s": 5})
    doc["models"]["group"] = {"targets": ["sim/sim-chat", "backup/sim-chat"]}
    async with running_gateway(doc) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            for key in ("ka", "kb", "kc", "kz"):
                gw.simulator.key_faults[key] = Fault(status=429, retry_after="40")
            first = await _chat(client, "group")
            assert first.status_code == 429
            calls = gw.simulator.requests
            assert calls == 4
            await trio.sleep(10)
            r = await _chat(client, "group")
            assert r.status_code == 429
            assert r.headers["retry-after"] == "30"
            assert r.json()["error"]["type"] == "overloaded_error"
            assert gw.simulator.requests == calls, "no upstream call while everything rests"


async def test_a_short_rest_within_the_budget_is_waited_out(tmp_path, clock):
    doc = _config(tmp_path, routing={"budget_s": 20})
    async with running_gateway(doc) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=None) as client:
            for key in ("ka", "kb", "kc"):
                gw.simulator.key_faults[key] = Fault(status=429, retry_after="15")
            start = trio.current_time()
            assert (await _chat(client)).status_code == 429
            gw.simulator.key_faults.clear()
            r = await _chat(client)
            assert r.status_code == 200
            assert trio.current_time() - start == pytest.approx(15, abs=0.5)
