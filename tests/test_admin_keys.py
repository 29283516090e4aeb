"""A key created without a credit limit is unlimited only when the operator says so."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_a_key_without_credit_needs_unlimited_true(config_doc):
    with trio.fail_after(30):
        async with running_gateway(config_doc) as gw, httpx.AsyncClient(base_url=gw.url) as client:
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "typo", "credit": "5.00"})
            assert r.status_code == 400 and "unlimited" in r.json()["error"]["message"]
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "both", "credit_usd": "1",
                                                                      "unlimited": True})
            assert r.status_code == 400
            r = await client.post("/admin/keys", headers=ADMIN, json={"name": "open", "unlimited": True})
            assert r.status_code == 201 and r.json()["credit_usd"] is None
            names = {k["name"] for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert names == {"test", "open"}
