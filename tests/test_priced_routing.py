"""A direct ``provider/model`` request is served only when pricing covers it.

Without this a client could name any model of a configured provider and be served at
no charge. The refusal comes before any credit is held or any upstream is called.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.conftest import DEMO_KEY, base_config, running_gateway

BEARER = {"authorization": f"Bearer {DEMO_KEY}"}


def priced_config(tmp_path) -> dict:
    doc = base_config(tmp_path)
    del doc["pricing"]["sim/*"]  # sim/sim-chat keeps its own price; no other sim model has one
    doc["providers"]["gift"] = {"family": "simulator", "embedded": True, "protocol": "openai_chat"}
    doc["pricing"]["gift/*"] = {"free": True}
    return doc


FRONT_DOORS = {
    "chat": ("/v1/chat/completions", BEARER,
             lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]},
             lambda body: body["error"]["type"] == "not_found_error" and body["error"]["param"] == "model"),
    "responses": ("/v1/responses", BEARER,
                  lambda model: {"model": model, "input": "hi"},
                  lambda body: body["error"]["type"] == "not_found_error"),
    "anthropic": ("/v1/messages", {"x-api-key": DEMO_KEY, "anthropic-version": "2023-06-01"},
                  lambda model: {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
                  lambda body: body["type"] == "error" and body["error"]["type"] == "not_found_error"),
}


@pytest.mark.parametrize("door", FRONT_DOORS)
async def test_an_unpriced_direct_model_is_refused_in_the_clients_shape(tmp_path, door):
    path, headers, body, refused = FRONT_DOORS[door]
    with trio.fail_after(20):
        async with running_gateway(priced_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.post(path, json=body("sim/sim-unpriced"), headers=headers)
            assert r.status_code == 404, r.text
            assert refused(r.json()), r.json()
            assert "not served" in r.text and "no price" in r.text
            assert gw.ledger_entries() == []
            assert gw.simulator.requests == 0
            assert gw.usage_actor.snapshot()["open_reservations"] == 0


async def test_a_priced_direct_model_is_served_and_charged(tmp_path):
    with trio.fail_after(20):
        async with running_gateway(priced_config(tmp_path)) as gw, httpx.AsyncClient(base_url=gw.url) as http:
            body = FRONT_DOORS["chat"][2]
            r = await http.post("/v1/chat/completions", json=body("sim/sim-chat"), headers=BEARER)
            assert r.status_code == 200, r.text
            r = await http.post("/v1/chat/completions", json=body("gift/sim-chat"), headers=BEARER)
            assert r.status_code == 200, r.text
            with trio.fail_after(10):
                while len(gw.ledger_entries()) < 2:
                    await trio.sleep(0.01)
            paid, free = gw.ledger_entries()
            assert (paid["provider"], paid["model"], paid["kind"], paid["cost_source"]) == (
                "sim", "sim-chat", "charge", "pricing")
            assert paid["amount_micro"] > 0
            assert (free["provider"], free["amount_micro"], free["cost_source"]) == ("gift", 0, "pricing")
            assert free["output"] > 0  # served, and charged nothing on purpose
