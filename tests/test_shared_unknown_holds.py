"""A reservation written though its reserve was refused (the connection broke at the
COMMIT, so the meter never heard it land) is settled at no charge by the next
heartbeat: it does not hold the key's credit for the life of the process, nor is it
charged in full as recovered at the next start. The meter's own open holds stay."""

from __future__ import annotations

import psycopg
import trio

from actors.usage_messages import Reservation, Reserve
from tests.conftest import DEMO_KEY, running_gateway
from tests.shared_backend import shared_config


def _pg(dsn: str, sql: str, params=None) -> list:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


async def test_a_written_but_refused_reservation_is_settled_at_no_charge(tmp_path, redis_url, pg_dsn):
    doc = shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url, heartbeat_s=600, instance_ttl_s=1800)
    with trio.fail_after(60):
        async with running_gateway(doc) as gw:
            meter = gw.usage_actor
            live = await gw.runtime.actors.usage.ask(Reserve("r-live", DEMO_KEY, "demo", ("sim/sim-chat",), 10, 10))
            assert isinstance(live, Reservation)
            _pg(pg_dsn, "INSERT INTO reservations (id, key_name, instance_id, provider, model, hold_micro, "
                        "created_at) VALUES ('r-lost', 'test', 'a', NULL, 'demo', 5000000, 1.0)")
            [(spent_before,)] = _pg(pg_dsn, "SELECT spent_micro FROM keys WHERE name = 'test'")
            await meter.sweep()
            open_ids = [row[0] for row in _pg(pg_dsn, "SELECT id FROM reservations ORDER BY id")]
            [(spent_after,)] = _pg(pg_dsn, "SELECT spent_micro FROM keys WHERE name = 'test'")
            lost = _pg(pg_dsn, "SELECT kind, amount_micro, cost_source FROM entries WHERE request_id = 'r-lost'")
            assert open_ids == ["r-live"]  # the meter's own open hold is untouched
            assert lost == [("charge", 0, "refused")] and spent_after == spent_before
            assert meter.forgotten == 1 and "r-live" in meter.core.holds
