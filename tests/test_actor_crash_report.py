"""``/admin/actors`` names the error that crashed an actor, and the actor comes back.

A crash in a caller's task (an idle actor runs a message inline) is handed back to the
actor's own loop; the report must show that error, not the hand-over message, nor the
nursery group the meter's loop wraps it in.
"""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from actors.usage_messages import Query
from protocols.errors import GatewayFailure
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@attrs.frozen
class Unhandled:
    """No actor handles this: asking one with it is a bug in the caller, so it crashes."""

    why: str


async def _after_restart(client: httpx.AsyncClient, name: str) -> dict:
    """``/admin/actors``'s entry for ``name`` once its crash has been counted."""
    while True:
        actor = (await client.get("/admin/actors", headers=ADMIN)).json()[name]
        if actor["restarts"]:
            return actor
        await trio.sleep(0.01)


async def test_a_meter_core_that_raises_is_reported_by_its_error(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            def on_fire(msg, now):
                raise RuntimeError("the ledger's core is on fire")

            gw.usage_actor.core.handle = on_fire
            with pytest.raises(GatewayFailure, match="usage actor: RuntimeError"):
                await gw.runtime.actors.usage.ask(Query("keys"))
            usage = await _after_restart(client, "usage")
            assert usage["restarts"] == 1
            assert usage["last_crash"] == "RuntimeError: the ledger's core is on fire"
            # rebuilt by its factory, with a sound core: the meter serves again
            r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                  json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert (await client.get("/admin/keys", headers=ADMIN)).status_code == 200


async def test_an_unknown_message_to_a_routing_actor_is_reported_by_its_error(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            with pytest.raises(GatewayFailure, match="routing actor: TypeError"):
                await gw.runtime.actors.routing.ask(Unhandled("a test crash"))
            routing = await _after_restart(client, "routing")
            assert routing["last_crash"] == ("TypeError: routing: unknown message "
                                             "Unhandled(why='a test crash')")
            r = await client.get("/v1/models", headers={"authorization": f"Bearer {DEMO_KEY}"})
            assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["demo"]


async def test_a_meter_that_fails_on_a_whole_answers_settlement_withholds_the_answer_and_books_nothing(config_doc):
    """A whole answer is booked in one write with its settlement (its hold was never on
    disk): when the meter crashes on that settlement, the client gets no answer it was
    not charged for, and the restarted meter owes nothing for it."""
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            def on_fire(msg, now):
                raise RuntimeError("the settlement is on fire")

            gw.usage_actor.core.settle = on_fire
            r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {DEMO_KEY}"},
                                  json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 503, r.text
            assert "choices" not in r.json()
            usage = await _after_restart(client, "usage")
            assert usage["last_crash"] == "RuntimeError: the settlement is on fire"
            assert (await client.get("/admin/usage/records", headers=ADMIN)).json()["records"] == []
            [key] = (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]
            assert (key["spent_usd"], key["in_flight"]) == ("0.000000", 0)
