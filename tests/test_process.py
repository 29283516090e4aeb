"""The gateway process's life: a graceful stop on SIGTERM, one gateway per state_dir.

Every test runs ``tollhouse serve`` as a child process on an ephemeral port, with the
embedded simulator slowed (``simulator.tokens_per_second``) so a stream lasts seconds,
and learns what the process is doing from the lines it prints. What the ledger holds
is read from a second start on the same state_dir, which is also where a hold left
open would show up as ``recovered``.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest
import trio

from gateway.state_lock import LOCK_FILE, StateDirBusy, StateDirLock
from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config, running_gateway
from tests.gateway_process import STOPPED, STOPPING, serve_process, write_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
TOKENS_PER_SECOND = 10
# A stream of N words lasts about N / TOKENS_PER_SECOND seconds.
SHORT_STREAM = 15  # ~1.5 s: finishes well inside a 60 s grace period
LONG_STREAM = 600  # ~60 s: outlives any grace period the tests give it


def _config(tmp_path: Path, grace_s: float) -> dict:
    doc = base_config(tmp_path)
    doc["server"] = {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": grace_s}
    doc["simulator"] = {"tokens_per_second": TOKENS_PER_SECOND}
    doc["streaming"] = {"ttfb_timeout_s": 30, "stall_timeout_s": 30}
    return doc


def _chat(words: int) -> dict:
    return {"model": "demo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"[[sim tokens={words}]] tell me"}]}


class Streams:
    """Chat streams opened against one gateway; each remembers how it ended."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.started = trio.Semaphore(0)
        self.bodies: dict[str, bytes] = {}  # request id -> every byte the client got
        self.cut: set[str] = set()  # ids of streams that ended without the body's end

    async def open(self, words: int) -> None:
        async with self.client.stream("POST", "/v1/chat/completions", json=_chat(words), headers=AUTH) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            self.bodies[request_id] = b""
            self.started.release()
            try:
                async for chunk in r.aiter_raw():
                    self.bodies[request_id] += chunk
            except httpx.HTTPError:
                self.cut.add(request_id)

    async def open_all(self, nursery: trio.Nursery, words: int, count: int) -> None:
        """Start ``count`` streams and return once each has its response headers."""
        for _ in range(count):
            nursery.start_soon(self.open, words)
        for _ in range(count):
            await self.started.acquire()


def _usage(body: bytes) -> dict:
    """The usage in a complete Chat stream (its last data chunk before ``[DONE]``)."""
    events = [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return json.loads(events[-2])["usage"]


async def _ledger_after_restart(doc: dict) -> tuple[list[dict], dict]:
    """Start a gateway again on the same state_dir (in this process: the same start-up
    recovery, without another interpreter's start-up time): (every ledger entry, the
    usage actor's state)."""
    async with running_gateway(doc) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await client.get("/admin/reservations", headers=ADMIN)).json()["reservations"] == []
            records = (await client.get("/admin/usage/records", headers=ADMIN)).json()["records"]
            usage_state = (await client.get("/admin/actors", headers=ADMIN)).json()["usage"]["state"]
    return records, usage_state


def _by_request(records: list[dict]) -> dict[str, list[dict]]:
    by_request: dict[str, list[dict]] = {}
    for record in records:
        by_request.setdefault(record["request_id"], []).append(record)
    return by_request


async def test_sigterm_lets_streams_in_flight_finish_and_charges_them_exactly(tmp_path):
    doc = _config(tmp_path, grace_s=600)
    config_path = write_config(tmp_path, doc)
    with trio.fail_after(60):
        async with serve_process(config_path) as gateway:
            url = await gateway.url()
            async with httpx.AsyncClient(base_url=url, timeout=30) as client, \
                    httpx.AsyncClient(base_url=url, timeout=30) as idle:
                assert (await idle.get("/healthz")).status_code == 200  # its connection stays pooled, idle
                streams = Streams(client)
                async with trio.open_nursery() as nursery:
                    await streams.open_all(nursery, SHORT_STREAM, 3)
                    gateway.send_signal(signal.SIGTERM)
                    assert "3 requests in flight" in await gateway.line(STOPPING)
                    with pytest.raises(httpx.ConnectError):  # the listener is closed: nothing new gets in
                        async with httpx.AsyncClient(base_url=url, timeout=5) as latecomer:
                            await latecomer.get("/healthz")
                # The stop ends with the streams, not with the 600 s grace period: the idle
                # keep-alive connection did not hold it.
                assert await gateway.wait() == 0
                await gateway.until_exit()
            assert "3 finished and 0 cut" in await gateway.line(STOPPED)
        assert streams.cut == set()
        records, usage_state = await _ledger_after_restart(doc)
    assert usage_state["recovered_at_start"] == 0
    by_request = _by_request(records)
    assert sorted(by_request) == sorted(streams.bodies)
    for request_id, body in streams.bodies.items():
        usage = _usage(body)
        assert usage["completion_tokens"] == SHORT_STREAM
        [charge] = by_request[request_id]
        assert (charge["reason"], charge["provenance"]) == ("end", "reported")
        # pricing: input $1.00 and output $2.00 per million tokens, i.e. 1 and 2 micro-USD a token
        assert charge["amount_micro"] == usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2
    assert not (tmp_path / "state" / "ledger.sqlite3-wal").exists()  # closed cleanly: the WAL is checkpointed


async def test_grace_period_shorter_than_the_streams_cuts_each_and_settles_it_once(tmp_path):
    doc = _config(tmp_path, grace_s=1)
    config_path = write_config(tmp_path, doc)
    with trio.fail_after(60):
        async with serve_process(config_path) as gateway:
            async with httpx.AsyncClient(base_url=await gateway.url(), timeout=30) as client:
                streams = Streams(client)
                async with trio.open_nursery() as nursery:
                    await streams.open_all(nursery, LONG_STREAM, 2)
                    gateway.send_signal(signal.SIGTERM)
                    await gateway.line(STOPPING)
                assert await gateway.wait() == 0
                await gateway.until_exit()
            assert "0 finished and 2 cut" in await gateway.line(STOPPED)
        # No client was told its stream was complete: each ends with the protocol's error
        # event saying the gateway is stopping, never with [DONE].
        for body in streams.bodies.values():
            events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
            assert b"[DONE]" not in body and b'"error"' in events[-1] and b"stopping" in events[-1]
        records, usage_state = await _ledger_after_restart(doc)
    assert usage_state["recovered_at_start"] == 0
    by_request = _by_request(records)
    assert sorted(by_request) == sorted(streams.bodies)
    for request_id in streams.bodies:
        [charge] = by_request[request_id]
        assert (charge["reason"], charge["provenance"]) == ("shutdown", "estimated")
        assert 0 < charge["amount_micro"] < charge["hold_micro"]  # what was consumed, not the hold


async def test_second_signal_during_the_grace_period_stops_at_once(tmp_path):
    doc = _config(tmp_path, grace_s=600)
    config_path = write_config(tmp_path, doc)
    with trio.fail_after(60):
        async with serve_process(config_path) as gateway:
            async with httpx.AsyncClient(base_url=await gateway.url(), timeout=30) as client:
                streams = Streams(client)
                async with trio.open_nursery() as nursery:
                    await streams.open_all(nursery, LONG_STREAM, 1)
                    gateway.send_signal(signal.SIGTERM)
                    await gateway.line(STOPPING)
                    gateway.send_signal(signal.SIGTERM)
                    with trio.fail_after(10):  # far less than the 600 s grace period or the stream
                        assert await gateway.wait() == -signal.SIGTERM
        assert streams.cut == set(streams.bodies)
        records, usage_state = await _ledger_after_restart(doc)
    [request_id] = streams.bodies
    [charge] = _by_request(records)[request_id]
    assert charge["reason"] == "recovered"  # nothing settled it: the next start did, as after a kill
    assert usage_state["recovered_at_start"] == 1


async def test_second_gateway_on_the_same_state_dir_is_refused_naming_the_holder(tmp_path):
    doc = _config(tmp_path, grace_s=5)
    config_path = write_config(tmp_path, doc)
    with trio.fail_after(60):
        async with serve_process(config_path) as first:
            await first.url()
            async with serve_process(config_path) as second:
                assert await second.wait() != 0
                await second.until_exit()
            refusal = second.stderr[-1]
            assert "is in use by another tollhouse gateway" in refusal
            assert f"pid {first.pid}" in refusal
            assert str(tmp_path / "state") in refusal
            assert not any(line.startswith("tollhouse listening") for line in second.stdout)
            first.send_signal(signal.SIGINT)  # Ctrl-C stops it as gracefully as SIGTERM
            assert await first.wait() == 0
        async with running_gateway(doc) as third:  # released on exit: the next one starts
            assert third.runtime.ready.is_set()


def test_state_dir_lock_names_its_holder_and_ignores_a_stale_pid(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / LOCK_FILE).write_text('{"pid": 999999999, "started": "2020-01-01T00:00:00+00:00"}\n')
    with StateDirLock.acquire(state_dir) as lock:  # a pid left by a killed holder blocks nothing
        with pytest.raises(StateDirBusy) as refused:
            StateDirLock.acquire(state_dir)  # flock is per open file: one process contends with itself
        assert f"pid {os.getpid()}, started " in str(refused.value)
        assert lock.held
    assert (state_dir / LOCK_FILE).read_text() == ""
    StateDirLock.acquire(state_dir).release()
