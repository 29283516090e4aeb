"""A ledger that cannot be written, or cannot be trusted, never costs or mints money.

Through real sockets: a ledger locked by another process in the middle of a request
(the settlement lands once the lock is gone, the key's slot is free at once, new
requests meanwhile get 503 in their protocol's shape); and ``tollhouse serve`` refusing
to start on an empty, a corrupt or a read-only ledger.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from actors.ledger import Ledger
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
LOCK_S = 5.0


def _hold_write_lock(path: Path, locked: trio.Event, token: trio.lowlevel.TrioToken) -> None:
    """Another process's writer: takes the ledger's write lock, keeps it LOCK_S real
    seconds, lets go."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        trio.from_thread.run_sync(locked.set, trio_token=token)
        time.sleep(LOCK_S)
        other.execute("ROLLBACK")
    finally:
        other.close()


async def _reservations(client: httpx.AsyncClient) -> list:
    return (await client.get("/admin/reservations", headers=ADMIN)).json()["reservations"]


async def test_a_ledger_locked_mid_request_settles_after_the_lock_and_frees_the_slot(tmp_path):
    doc = base_config(tmp_path)
    doc["keys"] = [{"name": "one", "key": "th-one", "credit_usd": "10", "max_concurrency": 1},
                   {"name": "two", "key": "th-two", "credit_usd": "10"}]
    doc["simulator"] = {"tokens_per_second": 50}
    doc["streaming"] = {"ttfb_timeout_s": 30, "stall_timeout_s": 30}
    ledger_path = Path(doc["state_dir"]) / "ledger.sqlite3"
    one = {"authorization": "Bearer th-one"}
    two = {"authorization": "Bearer th-two"}
    with trio.fail_after(60):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            async with trio.open_nursery() as nursery:
                async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                         headers=one) as first:
                    assert first.status_code == 200
                    request_id = first.headers["x-request-id"]
                    locked = trio.Event()
                    nursery.start_soon(trio.to_thread.run_sync, _hold_write_lock, ledger_path, locked,
                                       trio.lowlevel.current_trio_token())
                    await locked.wait()
                    locked_at = trio.current_time()
                    read: dict = {}

                    async def read_first() -> None:
                        read["body"] = await first.aread()
                        read["ended_at"] = trio.current_time()

                    async with trio.open_nursery() as reading:
                        reading.start_soon(read_first)
                        meter = gw.usage_actor
                        while not meter.backlog:
                            await trio.sleep(0.01)  # the stream ended and its settlement was refused
                        # the meter knows the ledger refuses writes: a new request is refused
                        refused = await client.post("/v1/chat/completions", json=CHAT, headers=two)
                        assert refused.status_code == 503
                        assert refused.json()["error"]["message"].startswith(
                            "The gateway's usage ledger cannot be written")
                    body, ended_at = read["body"], read["ended_at"]
                assert b"[DONE]" in body
                assert ended_at - locked_at >= LOCK_S - 0.5, "the stream's end waited for its settlement"
            # The lock is gone: the settlement is on disk, nothing is held, the slot is free.
            assert await _reservations(client) == []
            again = await client.post("/v1/chat/completions", json=CHAT, headers=one)
            assert again.status_code == 200
            records = (await client.get("/admin/usage/records", headers=ADMIN)).json()["records"]
            mine = [r for r in records if r["request_id"] == request_id]
            assert [(r["kind"], r["reason"], r["provenance"]) for r in mine] == [("charge", "end", "reported")]
            assert mine[0]["basis"] == "" and mine[0]["unanswered"] == []
            assert len(records) == 2, "the refused request left nothing behind"
            keys = {k["name"]: k for k in (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]}
            assert keys["one"]["in_flight"] == 0 and keys["one"]["held_usd"] == "0.000000"
            assert keys["two"]["spent_usd"] == "0.000000"
            spent = sum(r["amount_micro"] for r in records if r["key_name"] == "one")
    with sqlite3.connect(ledger_path) as db:
        [(on_disk,)] = db.execute("SELECT spent_micro FROM keys WHERE name = 'one'").fetchall()
        assert on_disk == spent, "each settlement added to the balance exactly once"
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchall() == [(0,)]


async def test_while_a_settlement_waits_its_hold_is_listed_as_settling_and_the_slot_is_free(tmp_path):
    doc = base_config(tmp_path)
    doc["keys"] = [{"name": "one", "key": "th-one", "credit_usd": "10", "max_concurrency": 1}]
    doc["simulator"] = {"tokens_per_second": 50}
    ledger_path = Path(doc["state_dir"]) / "ledger.sqlite3"
    with trio.fail_after(60):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            other = sqlite3.connect(ledger_path, isolation_level=None)
            try:
                async with trio.open_nursery() as nursery:
                    result = {}

                    async def call() -> None:
                        result["r"] = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                                        headers={"authorization": "Bearer th-one"})

                    nursery.start_soon(call)
                    meter = gw.usage_actor
                    while not (meter.core.holds and meter.commits):
                        await trio.sleep(0.001)  # the reserve is on disk: polled under the deadline above
                    other.execute("BEGIN IMMEDIATE")  # another process takes the write lock
                    while not meter.backlog:
                        await trio.sleep(0.01)  # the stream ended and its settlement was refused
                    [view] = await _reservations(client)
                    assert view["status"] == "settling"
                    [key] = (await client.get("/admin/keys", headers=ADMIN)).json()["keys"]
                    assert key["in_flight"] == 0
                    state = (await client.get("/admin/actors", headers=ADMIN)).json()["usage"]["state"]
                    assert state["settling"] == 1 and "locked" in state["ledger_fault"]
                    health = await client.get("/readyz")
                    assert (health.status_code, health.json()["status"]) == (503, "ledger_unavailable")
                    assert "locked" not in health.json()["detail"]  # the fault is for the admin API and the log
                    assert gw.gateway.runtime.config.state_dir not in health.text  # an open probe shows no path
                    assert (await client.get("/healthz")).status_code == 200  # alive all the same
                    other.execute("ROLLBACK")
                assert result["r"].status_code == 200
                assert await _reservations(client) == []
                state = (await client.get("/admin/actors", headers=ADMIN)).json()["usage"]["state"]
                assert (state["settling"], state["ledger_fault"]) == (0, None)
                assert (await client.get("/readyz")).json() == {"status": "ready"}
            finally:
                other.close()


async def test_a_stop_waits_for_a_settlement_the_ledger_refused(tmp_path):
    doc = base_config(tmp_path)
    doc["streaming"]["settle_timeout_s"] = 0.5  # the answer goes out while its settlement still waits
    doc["simulator"] = {"tokens_per_second": 50}  # the answer takes a while: the lock comes first
    ledger_path = Path(doc["state_dir"]) / "ledger.sqlite3"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
                other = sqlite3.connect(ledger_path, isolation_level=None, check_same_thread=False)

                answered = trio.Event()

                async def call() -> None:
                    # a stream: its hold is on disk before its first byte, its settlement parks
                    r = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                                          headers={"authorization": f"Bearer {DEMO_KEY}"})
                    assert r.status_code == 200
                    answered.set()

                nursery.start_soon(call)
                meter = gw.usage_actor
                while not (meter.core.holds and meter.commits):
                    await trio.sleep(0.001)  # the reserve is on disk: polled under the deadline above
                other.execute("BEGIN IMMEDIATE")
                await answered.wait()
                assert meter.backlog, "the settlement was refused and waits"
                # The gateway stops with the settlement unwritten; the lock goes a moment later.
                nursery.start_soon(trio.to_thread.run_sync, _release_after, other, 1.0)
    with sqlite3.connect(ledger_path) as db:
        assert db.execute("SELECT kind, reason FROM entries").fetchall() == [("charge", "end")]
        assert db.execute("SELECT COUNT(*) FROM reservations").fetchall() == [(0,)]


def _release_after(db: sqlite3.Connection, seconds: float) -> None:
    """Another process lets go of the ledger's write lock after ``seconds`` real seconds."""
    time.sleep(seconds)
    db.execute("ROLLBACK")
    db.close()


async def test_a_reserve_refused_by_a_locked_ledger_leaves_nothing_and_the_next_one_is_served(tmp_path):
    doc = base_config(tmp_path)
    ledger_path = Path(doc["state_dir"]) / "ledger.sqlite3"
    auth = {"authorization": f"Bearer {DEMO_KEY}"}
    with trio.fail_after(30):
        async with running_gateway(doc) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            other = sqlite3.connect(ledger_path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                refused = await client.post("/v1/chat/completions", json=CHAT, headers=auth)
                assert refused.status_code == 503 and refused.json()["error"]["type"] == "overloaded_error"
                assert await _reservations(client) == []
                other.execute("ROLLBACK")
            finally:
                other.close()
            served = await client.post("/v1/chat/completions", json=CHAT, headers=auth)
            assert served.status_code == 200
            assert [r["reason"] for r in gw.ledger_entries()] == ["end"]


# ---------------------------------------------------------------- start refuses an untrustworthy ledger


def _config_file(tmp_path: Path) -> Path:
    doc = base_config(tmp_path)
    doc["server"] = {"host": "127.0.0.1", "port": 0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


async def _serve_refuses(tmp_path: Path) -> str:
    config = _config_file(tmp_path)
    with trio.fail_after(60):
        proc = await trio.run_process([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                                      capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode != 0
    return proc.stderr.decode()


def _ledger_path(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return state / "ledger.sqlite3"


async def test_serve_refuses_a_zero_length_ledger(tmp_path):
    path = _ledger_path(tmp_path)
    path.write_bytes(b"")
    err = await _serve_refuses(tmp_path)
    assert f"cannot start: ledger {path}: the file is empty" in err
    assert path.stat().st_size == 0, "never a silent new ledger"


async def test_serve_refuses_a_corrupt_ledger(tmp_path):
    path = _ledger_path(tmp_path)
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    err = await _serve_refuses(tmp_path)
    assert f"cannot start: ledger {path}: is not a readable SQLite ledger" in err
    assert path.read_bytes() == garbage


async def test_serve_refuses_a_ledger_that_fails_its_integrity_check(tmp_path):
    path = _ledger_path(tmp_path)
    Ledger(path.parent).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", [(f"n{i}", "x" * 500) for i in range(200)])
        [(root,)] = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchall()
        [(page,)] = db.execute("PRAGMA page_size").fetchall()
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page + 3:(root - 1) * page + 5] = b"\xff\xff"  # a b-tree page claims 65535 cells
    path.write_bytes(bytes(data))
    err = await _serve_refuses(tmp_path)
    assert f"cannot start: ledger {path}: fails its integrity check" in err


async def test_serve_refuses_a_read_only_ledger(tmp_path):
    path = _ledger_path(tmp_path)
    Ledger(path.parent).close()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if made.returncode != 0:
            pytest.skip("root ignores file modes and this filesystem refuses chattr +i")
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o444)
        undo = None
    try:
        err = await _serve_refuses(tmp_path)
    finally:
        if undo:
            subprocess.run(undo, check=True)
    assert f"cannot start: ledger {path}: is read-only" in err


def test_an_older_ledger_gains_the_new_columns_and_keeps_its_entries(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE keys (name TEXT PRIMARY KEY, key_hash TEXT UNIQUE NOT NULL, credit_micro INTEGER,
                spent_micro INTEGER NOT NULL DEFAULT 0, disabled INTEGER NOT NULL DEFAULT 0, models TEXT,
                requests_per_minute INTEGER, max_concurrency INTEGER, created_at REAL NOT NULL);
            CREATE TABLE reservations (id TEXT PRIMARY KEY, key_name TEXT NOT NULL, provider TEXT, model TEXT,
                hold_micro INTEGER NOT NULL, created_at REAL NOT NULL);
            CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,
                kind TEXT NOT NULL, key_name TEXT NOT NULL, provider TEXT, model TEXT, client_model TEXT,
                credential TEXT, amount_micro INTEGER NOT NULL, hold_micro INTEGER NOT NULL,
                input INTEGER NOT NULL DEFAULT 0, cached_input INTEGER NOT NULL DEFAULT 0,
                cache_write INTEGER NOT NULL DEFAULT 0, output INTEGER NOT NULL DEFAULT 0,
                reasoning INTEGER NOT NULL DEFAULT 0, provenance TEXT NOT NULL, reason TEXT NOT NULL,
                cost_source TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (request_id, kind));
            INSERT INTO keys VALUES ('k', 'h', 1000, 7, 0, NULL, NULL, NULL, 0);
            INSERT INTO entries (request_id, kind, key_name, amount_micro, hold_micro, provenance, reason,
                cost_source, created_at) VALUES ('old', 'charge', 'k', 7, 9, 'reported', 'end', 'pricing', 0);
        """)
    ledger = Ledger(tmp_path)
    try:
        entry = {"request_id": "new", "kind": "charge", "key_name": "k", "provider": "p", "model": "m",
                 "client_model": "m", "credential": "a", "amount_micro": 5, "hold_micro": 9, "input": 1,
                 "cached_input": 0, "cache_write": 0, "output": 1, "reasoning": 0, "provenance": "estimated",
                 "reason": "client_cancel", "cost_source": "hold", "created_at": 1.0, "basis": "input+forwarded",
                 "unanswered": ["p/m@b"]}
        settle = ("settle", {"request_id": "new", "key_name": "k", "charged": 5, "entries": [entry]})
        ledger.apply([settle])
        ledger.apply([settle])  # written twice (a retry after an unclear failure): booked once
        old, new = ledger.entries()
        assert (old["request_id"], old["basis"], old["unanswered"]) == ("old", "", [])
        assert (new["basis"], new["unanswered"]) == ("input+forwarded", ["p/m@b"])
        keys, _ = ledger.load()
        assert keys[0]["spent_micro"] == 12
    finally:
        ledger.close()


def _hold_op(request_id: str) -> tuple:
    return ("hold", {"id": request_id, "key_name": "k", "provider": None, "model": "m", "hold_micro": 9,
                     "created_at": 1.0})


def test_a_write_on_the_event_loop_never_waits_for_a_lock_and_writes_nothing_when_it_would(tmp_path):
    ledger = Ledger(tmp_path)
    path = tmp_path / "ledger.sqlite3"
    try:
        assert ledger.apply_now([_hold_op("free")]) is True
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            assert ledger.apply_now([_hold_op("locked")]) is False
            other.execute("ROLLBACK")
        finally:
            other.close()
        with ledger._lock:  # a read or a checkpoint in the worker thread
            assert ledger.apply_now([_hold_op("busy")]) is False
        ledger.checkpoint()
        _, holds = ledger.load()
        assert [h["id"] for h in holds] == ["free"]
    finally:
        ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM reservations").fetchall() == [("free",)]
