"""``/healthz`` answers while the process lives; ``/readyz`` says whether new requests
can be served, and why not -- never because of an upstream."""

from __future__ import annotations

import httpx
import pytest
import trio

from protocols.errors import GatewayFailure
from tests.conftest import DEMO_KEY, running_gateway
from tests.test_actor_crash_report import Unhandled

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_running_gateway_is_alive_and_ready(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            alive, ready = await client.get("/healthz"), await client.get("/readyz")
            assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_an_upstream_that_refuses_everything_leaves_the_gateway_ready(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(3):
                r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                      json={**CHAT, "model": "sim/sim-chat+status=429+retry_after=30"})
                assert r.status_code == 429
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_a_crashed_actor_makes_the_gateway_not_ready_until_it_is_back(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            gw.runtime.supervisor.restart_backoff = 3600  # it stays down while the test looks
            with pytest.raises(GatewayFailure):
                await gw.runtime.actors.routing.ask(Unhandled("a test crash"))
            while gw.runtime.supervisor.slots["routing"].restarts == 0:
                await trio.sleep(0.01)  # the supervisor has seen the crash: polled under the deadline
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "actor_down", "detail": "routing"})
            assert (await client.get("/healthz")).status_code == 200


async def test_a_stopping_gateway_is_alive_and_not_ready(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            gw.gateway.traffic.begin_stop()
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (503, {"status": "stopping"})
            assert (await client.get("/healthz")).status_code == 200
