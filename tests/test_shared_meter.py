"""Two gateway instances on one Postgres meter one key as one: credit is never spent
twice, every charge is accounted for, and no hold outlives its request."""

from __future__ import annotations

from decimal import Decimal

import httpx
import psycopg
import trio

from actors.key_terms import parse_utc
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


async def test_two_instances_spend_one_credit_once(tmp_path, redis_url, pg_dsn):
    docs = [shared_config(tmp_path, pg_dsn, name, redis_url=redis_url) for name in ("a", "b")]
    for doc in docs:
        doc["keys"] = [{"name": "test", "key": DEMO_KEY, "credit_usd": "0.004"}]
        doc["simulator"] = {"tokens_per_second": 400}
        # the credit is what refuses here: the credential's default 64 leases across both
        # instances would refuse the streams past them with a 503 "busy" as well
        doc["providers"]["sim"]["credentials"] = [{"id": "sim-0", "key": "sim-key", "max_concurrency": 400}]
        # 200 streams on two gateways in one process: on a loaded machine a stream may
        # wait past the suite's 5 s deadlines for its turn, which is not what this checks
        doc["streaming"] = {**doc["streaming"], "ttfb_timeout_s": 60, "stall_timeout_s": 60}
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


class Wall:
    """A wall clock the test moves (the meter's core reads it for budgets and expiry)."""

    def __init__(self, iso: str) -> None:
        self.t = float(parse_utc(iso))

    def __call__(self) -> float:
        return self.t


async def _chat(http: httpx.AsyncClient, url: str, key: str) -> httpx.Response:
    return await http.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                           json={"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})


async def test_a_key_created_revoked_or_expired_on_one_instance_is_seen_on_the_other(tmp_path, redis_url, pg_dsn):
    with trio.fail_after(60):
        async with running_gateway(shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url)) as a, \
                running_gateway(shared_config(tmp_path, pg_dsn, "b", redis_url=redis_url)) as b, \
                httpx.AsyncClient(timeout=30) as http:
            made = {}
            for name in ("gone", "late"):
                r = await http.post(a.url + "/admin/keys", headers=ADMIN, json={"name": name, "credit_usd": "1.00"})
                assert r.status_code == 201, r.text
                made[name] = r.json()["key"]
                r = await _chat(http, b.url, made[name])  # made on a: b knows it at once
                assert r.status_code == 200, r.text
            r = await http.delete(a.url + "/admin/keys/gone", headers=ADMIN)
            assert r.status_code == 200, r.text
            r = await http.patch(a.url + "/admin/keys/late", headers=ADMIN, json={"expires_at": "2020-01-01T00:00:00Z"})
            assert r.status_code == 200, r.text
            for gw in (b, a):
                r = await _chat(http, gw.url, made["gone"])
                assert r.status_code == 401 and "revoked" in r.text, r.text
                r = await _chat(http, gw.url, made["late"])
                assert r.status_code == 401 and "expired" in r.text, r.text
            r = await _chat(http, b.url, "th-nobody-has-this-key")
            assert r.status_code == 401, r.text
            listed = {k["name"]: k for k in (await http.get(b.url + "/admin/keys", headers=ADMIN)).json()["keys"]}
            assert listed["gone"]["revoked"] and listed["late"]["expired"]  # b lists what a changed


async def test_a_daily_budget_counts_across_instances_and_resets_at_the_utc_boundary(tmp_path, redis_url, pg_dsn):
    wall = Wall("2026-12-02T23:59:00Z")
    with trio.fail_after(60):
        async with running_gateway(shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url)) as a, \
                running_gateway(shared_config(tmp_path, pg_dsn, "b", redis_url=redis_url)) as b, \
                httpx.AsyncClient(timeout=30) as http:
            a.usage_actor.core.wall = b.usage_actor.core.wall = wall
            r = await http.patch(a.url + "/admin/keys/test", headers=ADMIN,
                                 json={"budget": {"period": "day", "limit_usd": "1.00"}})
            assert r.status_code == 200 and r.json()["budget"]["resets_at"] == "2026-12-03T00:00:00Z"
            assert (await _chat(http, a.url, DEMO_KEY)).status_code == 200
            budget = (await http.get(b.url + "/admin/keys", headers=ADMIN)).json()["keys"][0]["budget"]
            spent = budget["spent_usd"]
            assert spent != "0.000000"  # spent on a, counted on b
            # the limit lowered to twice one request's cost: what is left is less than a hold
            r = await http.patch(b.url + "/admin/keys/test", headers=ADMIN,
                                 json={"budget": {"period": "day", "limit_usd": str(2 * Decimal(spent))}})
            assert r.json()["budget"]["spent_usd"] == spent
            for gw in (a, b):
                r = await _chat(http, gw.url, DEMO_KEY)
                assert r.status_code == 429 and "daily budget" in r.text, r.text
                assert r.headers["retry-after"] == "60"  # to the end of the UTC day
            wall.t = float(parse_utc("2026-12-03T00:00:00Z"))
            assert (await _chat(http, b.url, DEMO_KEY)).status_code == 200
            for gw in (a, b):
                budget = (await http.get(gw.url + "/admin/keys", headers=ADMIN)).json()["keys"][0]["budget"]
                assert budget["period_start"] == "2026-12-03T00:00:00Z"
                assert budget["spent_usd"] == spent  # the new day counts only its one request
    [(start, day_spent)] = _pg(pg_dsn, "SELECT budget_start, budget_spent_micro FROM keys WHERE name = 'test'")
    assert start == parse_utc("2026-12-03T00:00:00Z") and day_spent > 0


async def test_a_keys_concurrency_and_rate_limits_hold_across_instances(tmp_path, redis_url, pg_dsn):
    docs = [shared_config(tmp_path, pg_dsn, name, redis_url=redis_url) for name in ("a", "b")]
    for doc in docs:
        doc["simulator"] = {"tokens_per_second": 5}  # streams that stay in flight
    with trio.fail_after(60):
        async with running_gateway(docs[0]) as a, running_gateway(docs[1]) as b, \
                httpx.AsyncClient(timeout=30) as http:
            r = await http.patch(a.url + "/admin/keys/test", headers=ADMIN, json={"max_concurrency": 2})
            assert r.status_code == 200, r.text
            in_flight = trio.Semaphore(0)
            done = trio.Event()

            async def hold_one() -> None:
                async with http.stream("POST", a.url + "/v1/chat/completions", json=_stream(30),
                                       headers=AUTH) as response:
                    assert response.status_code == 200
                    in_flight.release()
                    await done.wait()

            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(hold_one)
                for _ in range(2):
                    await in_flight.acquire()
                r = await _chat(http, b.url, DEMO_KEY)  # two in flight on a: b refuses the third
                assert r.status_code == 429 and "2 requests in flight" in r.text, r.text
                done.set()
                nursery.cancel_scope.cancel()

            # requests per minute, counted in one window both meters are handed
            shared = a.usage_actor.windows
            b.usage_actor.windows = shared
            r = await http.patch(a.url + "/admin/keys/test", headers=ADMIN,
                                 json={"max_concurrency": None, "requests_per_minute": 3})
            assert r.status_code == 200, r.text
            # b reads the key's new limit with the next message that touches the key (the
            # limit a window is asked with is the key's as the instance last read it)
            assert (await http.get(b.url + "/v1/models", headers=AUTH)).status_code == 200
            statuses = [(await _chat(http, gw.url, DEMO_KEY)).status_code for gw in (a, b, a, b, a)]
            assert statuses == [200, 200, 200, 429, 429], statuses  # 3 in the minute across both
