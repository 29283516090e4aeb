"""The shared backend when Postgres cannot be used: never a silent loss, never a DSN shown.

Postgres refusing connections is a real server's refusal here (its database set to
accept none, its sessions ended), not a mock: settlements wait and land once it
answers again, new requests are refused with 503 meanwhile, ``/readyz`` says
``ledger_unavailable``; a gateway started while it refuses waits, not ready, until it
answers; a database migrated by a newer gateway refuses the start.
"""

from __future__ import annotations

import json
import logging
import sys

import httpx
import psycopg
import trio

from actors.ledger_pg_schema import MIGRATIONS
from actors.ledger_pg import PgLedger
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, running_gateway
from tests.gateway_process import write_config
from tests.shared_backend import shared_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
CHAT = {"model": "demo", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def _dbname(dsn: str) -> str:
    return dict(part.split("=", 1) for part in dsn.split())["dbname"]


def _refuse_connections(server, dsn: str, refuse: bool) -> None:
    """The database accepts no new session (and its open ones end), or accepts them again."""
    name = _dbname(dsn)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if refuse else "true"}')
        if refuse:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def _migrate(dsn: str) -> None:
    ledger = PgLedger(dsn, "setup")
    ledger.open()
    ledger.close()


def _pg(dsn: str, sql: str) -> list:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


async def _ready(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.get(url + "/readyz")


async def test_postgres_refusing_mid_serve_holds_settlements_and_refuses_new_requests(tmp_path, redis_url, pg_server, pg_dsn):
    doc = shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url)
    doc["simulator"] = {"tokens_per_second": 20}
    doc["streaming"] = {**doc["streaming"], "settle_timeout_s": 1}  # the stream's end waits this for its settlement
    with trio.fail_after(90):
        async with running_gateway(doc) as gw, httpx.AsyncClient(timeout=30) as http:
            meter = gw.usage_actor
            answers: list[int] = []
            started = trio.Event()

            async def stream() -> None:
                body = {**CHAT, "stream": True, "max_tokens": 30}
                async with http.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=AUTH) as r:
                    async for _ in r.aiter_bytes():
                        started.set()
                    answers.append(r.status_code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                await started.wait()
                _refuse_connections(pg_server, pg_dsn, True)
                r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
                assert r.status_code == 503 and r.json()["error"]["type"], r.text
            assert answers == [200]  # the stream was served; its settlement waits
            assert meter.backlog and meter.fault is not None
            r = await _ready(http, gw.url)
            assert r.status_code == 503 and r.json()["status"] == "ledger_unavailable", r.text
            assert "port" not in r.text and "127.0.0.1" not in r.text
            _refuse_connections(pg_server, pg_dsn, False)
            await meter.wait_written()
            assert (await _ready(http, gw.url)).status_code == 200
            assert (await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200
    rows = _pg(pg_dsn, "SELECT kind, COUNT(*) FROM entries GROUP BY kind")
    assert rows == [("charge", 2)]
    [(spent,)] = _pg(pg_dsn, "SELECT spent_micro FROM keys")
    [(charged,)] = _pg(pg_dsn, "SELECT SUM(amount_micro) FROM entries")
    assert spent == charged and _pg(pg_dsn, "SELECT COUNT(*) FROM reservations") == [(0,)]


async def test_a_start_while_postgres_refuses_waits_not_ready_and_never_shows_the_dsn(tmp_path, redis_url, pg_server, pg_dsn,
                                                                                      caplog):
    _migrate(pg_dsn)  # a database that exists, then refuses sessions
    _refuse_connections(pg_server, pg_dsn, True)
    dsn = pg_dsn + " password=pg-secret-pw"
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        async with running_gateway(shared_config(tmp_path, dsn, "a", redis_url=redis_url)) as gw, httpx.AsyncClient(timeout=30) as http:
            r = await _ready(http, gw.url)
            assert r.status_code == 503 and r.json()["status"] == "ledger_unavailable", r.text
            r = await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            assert r.status_code == 503, r.text
            shown = [r.text, (await http.get(gw.url + "/admin/config", headers=ADMIN)).text,
                     (await http.get(gw.url + "/admin/actors", headers=ADMIN)).text]
            _refuse_connections(pg_server, pg_dsn, False)
            while (await _ready(http, gw.url)).status_code != 200:  # the meter retries each second
                await trio.sleep(0.1)
            assert (await http.post(gw.url + "/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200
    shown.append(caplog.text)
    for text in shown:
        assert "pg-secret-pw" not in text and _dbname(pg_dsn) not in text, text[:2000]


async def test_serve_refuses_a_database_migrated_by_a_newer_gateway(tmp_path, redis_url, pg_dsn):
    _migrate(pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
    doc = shared_config(tmp_path, pg_dsn, "a", redis_url=redis_url)
    doc["server"] = {"host": "127.0.0.1", "port": 0}
    config = write_config(tmp_path, doc)
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                      capture_stdout=True, capture_stderr=True, check=False)
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert f"schema is version {len(MIGRATIONS) + 1}, newer than this gateway knows ({len(MIGRATIONS)})" in err, err
    assert _dbname(pg_dsn) not in err and json.dumps(pg_dsn) not in err
