"""Two gateway instances on one Postgres meter one key as one: credit is never spent
twice, every charge is accounted for, and no hold outlives its request."""

from __future__ import annotations

import httpx
import psycopg
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.shared_backend import shared_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}


def _stream(max_tokens: int = 40) -> dict:
    return {"model": "demo", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "tell me a story"}]}


def _pg(dsn: str, sql: str, params=None) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def test_two_instances_spend_one_credit_once(tmp_path, pg_dsn):
    docs = [shared_config(tmp_path, pg_dsn, name) for name in ("a", "b")]
    for doc in docs:
        doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "0.004"}]
        doc["simulator"] = {"tokens_per_second": 400}
    statuses: list[int] = []
    with trio.fail_after(120):
        async with running_gateway(docs[0]) as a, running_gateway(docs[1]) as b:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                async def one(url: str) -> None:
                    async with client.stream("POST", url + "/v1/chat/completions", json=_stream(),
                                             headers=AUTH) as response:
                        body = await response.aread()
                        if response.status_code == 200:
                            assert b"[DONE]" in body
                        statuses.append(response.status_code)

                async with trio.open_nursery() as nursery:
                    for n in range(200):
                        nursery.start_soon(one, (a, b)[n % 2].url)
                keys = (await client.get(b.url + "/admin/keys", headers=ADMIN)).json()["keys"]
    assert len(statuses) == 200 and set(statuses) <= {200, 402}, sorted(set(statuses))
    served, refused = statuses.count(200), statuses.count(402)
    assert served > 0 and refused > 0, (served, refused)
    [(credit, spent)] = _pg(pg_dsn, "SELECT credit_micro, spent_micro FROM keys WHERE name = 'test'")
    [(charged, overrun, charges)] = _pg(
        pg_dsn, "SELECT SUM(amount_micro), COALESCE(SUM(amount_micro) FILTER (WHERE kind = 'overrun'), 0), "
                "COUNT(*) FILTER (WHERE kind = 'charge') FROM entries WHERE key_name = 'test'")
    assert charges == served
    assert charged == spent  # the sum charged is the credit's decrease
    assert spent <= credit + overrun
    assert _pg(pg_dsn, "SELECT COUNT(*) FROM reservations") == [(0,)]
    [view] = [k for k in keys if k["name"] == "test"]  # either instance shows what both spent
    assert view["in_flight"] == 0 and float(view["held_usd"]) == 0
    assert round(float(view["spent_usd"]) * 1_000_000) == spent
    print(f"served {served}, refused {refused}")
