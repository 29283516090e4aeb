"""Instances of the shared backend: a killed instance's holds are settled by a survivor
once its heartbeat expires -- each exactly once -- and a start never touches the holds
of an instance that is alive."""

from __future__ import annotations

import signal

import httpx
import psycopg
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.gateway_process import serve_process, write_config
from tests.shared_backend import shared_config

AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
FAST_HEARTBEAT = {"heartbeat_s": 0.3, "instance_ttl_s": 1.5}
STREAMS = 3


def _pg(dsn: str, sql: str, params=None) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


async def test_a_killed_instances_holds_are_settled_once_by_a_survivor(tmp_path, redis_url, pg_dsn):
    doc = shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url, **FAST_HEARTBEAT)
    doc["simulator"] = {"tokens_per_second": 2}  # streams that stay in flight
    ids: list[str] = []
    with trio.fail_after(90):
        async with serve_process(write_config(tmp_path, doc)) as a:
            url = await a.url()
            async with httpx.AsyncClient(timeout=60) as http, trio.open_nursery() as nursery:
                started = trio.Semaphore(0)

                async def stream() -> None:
                    body = {"model": "demo", "stream": True, "max_tokens": 200,
                            "messages": [{"role": "user", "content": "a long story"}]}
                    try:
                        async with http.stream("POST", url + "/v1/chat/completions", json=body,
                                               headers=AUTH) as response:
                            assert response.status_code == 200
                            ids.append(response.headers["x-request-id"])
                            first = True
                            async for _ in response.aiter_bytes():
                                if first:
                                    started.release()
                                    first = False
                    except httpx.HTTPError:
                        pass  # the instance is killed under it

                for _ in range(STREAMS):
                    nursery.start_soon(stream)
                for _ in range(STREAMS):
                    await started.acquire()
                assert _pg(pg_dsn, "SELECT COUNT(*) FROM reservations WHERE instance_id = 'a'") == [(STREAMS,)]

                # a second instance starting now leaves the live instance's holds alone
                async with running_gateway(shared_config(tmp_path, pg_dsn, "b", redis_url=redis_url, **FAST_HEARTBEAT)) as b:
                    survivor = b.usage_actor
                    assert survivor.snapshot()["recovered_at_start"] == 0
                    assert _pg(pg_dsn, "SELECT COUNT(*) FROM reservations WHERE instance_id = 'a'") == [(STREAMS,)]
                    # b's admin lists the holds in flight on a, each naming its instance
                    listed = (await http.get(b.url + "/admin/reservations", headers=ADMIN)).json()["reservations"]
                    assert sorted(h["request_id"] for h in listed) == sorted(ids)
                    assert {(h["instance"], h["status"], h["key"]) for h in listed} == {("a", "open", "test")}
                    a.send_signal(signal.SIGKILL)
                    await a.wait()
                    await survivor.wait_swept(STREAMS)  # once a's heartbeat is older than its ttl
                    assert survivor.claimed == ["a"]
                    assert await survivor.sweep() == 0  # a later sweep finds nothing left
                    listed = (await http.get(b.url + "/admin/reservations", headers=ADMIN)).json()["reservations"]
                    assert listed == []
                nursery.cancel_scope.cancel()
    assert len(ids) == STREAMS
    rows = _pg(pg_dsn, "SELECT request_id, kind, reason, provenance FROM entries ORDER BY request_id")
    assert sorted(r[0] for r in rows) == sorted(ids)  # one entry per request: settled exactly once
    assert {(r[1], r[2], r[3]) for r in rows} == {("charge", "recovered", "estimated")}
    assert _pg(pg_dsn, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert _pg(pg_dsn, "SELECT id FROM instances") == []  # a killed, b stopped gracefully
    [(spent,)] = _pg(pg_dsn, "SELECT spent_micro FROM keys WHERE name = 'test'")
    [(charged,)] = _pg(pg_dsn, "SELECT SUM(amount_micro) FROM entries")
    assert spent == charged > 0


async def test_a_meter_bounds_its_statements_well_inside_its_heartbeats_ttl(tmp_path, redis_url, pg_dsn):
    """A batch that waits out its statement timeout rolls back the heartbeat it carried:
    the bound is a third of ``instance_ttl_s`` so the next heartbeat lands before the
    others may take this live instance for dead and charge its holds."""
    doc = shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url, heartbeat_s=0.3, instance_ttl_s=1.5)
    with trio.fail_after(60):
        async with running_gateway(doc) as gw:
            ledger = gw.usage_actor.ledger
            [(shown,)] = await trio.to_thread.run_sync(ledger.transaction, lambda tx: tx.rows("SHOW statement_timeout"))
    assert shown == "500ms"
