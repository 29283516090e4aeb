"""SIGKILL the gateway process mid-stream; on restart every hold is settled once.

The rule it checks: the restarted ledger has every request whose client received a
byte (each stream's hold is on disk before its first byte), and nothing of a request
whose client received nothing yet (a whole answer is booked in one write, with its
settlement, before it is sent)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.conftest import ADMIN_TOKEN, DEMO_KEY, base_config

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
AUTH = {"authorization": f"Bearer {DEMO_KEY}"}
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(config_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


async def _wait_ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        while True:  # readiness of a separate process: poll, under the caller's deadline
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await trio.sleep(0.05)


async def test_sigkill_mid_stream_then_restart_recovers_every_hold(tmp_path):
    port = _free_port()
    doc = base_config(tmp_path)
    doc["server"] = {"host": "127.0.0.1", "port": port}
    doc["simulator"] = {"tokens_per_second": 2}
    # an upstream that takes requests and never answers (the kernel accepts for it)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    doc["providers"]["silent"] = {"family": "openai_compat",
                                  "base_url": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
                                  "credentials": [{"id": "silent-1", "key": "sk-silent"}]}
    doc["models"]["silent"] = {"targets": ["silent/m"]}
    doc["pricing"]["silent/m"] = {"input": "1.00", "output": "2.00"}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(doc))
    url = f"http://127.0.0.1:{port}"
    proc = await _start(config_path)
    try:
        with trio.fail_after(30):
            await _wait_ready(url)
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                done = []
                for _ in range(3):
                    r = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
                    assert r.status_code == 200
                    done.append(r.headers["x-request-id"])
                in_flight = []
                async with trio.open_nursery() as nursery:
                    started = trio.Semaphore(0)

                    async def hang() -> None:
                        try:
                            async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                                     headers=AUTH) as r:
                                in_flight.append(r.headers["x-request-id"])
                                started.release()
                                await r.aread()
                        except httpx.HTTPError:
                            pass  # the gateway is killed under this stream: that is the test

                    async def whole() -> None:
                        try:  # a whole answer the upstream never gives: still there when the gateway is killed
                            await client.post("/v1/chat/completions", json={**CHAT, "model": "silent"}, headers=AUTH)
                        except httpx.HTTPError:
                            pass  # killed before its client received a byte

                    for _ in range(4):
                        nursery.start_soon(hang)
                    for _ in range(4):
                        await started.acquire()
                    for _ in range(2):
                        nursery.start_soon(whole)
                    while True:  # the whole answers are reserved in memory: polled under the deadline
                        reservations = (await client.get("/admin/reservations", headers=ADMIN)).json()["reservations"]
                        if len(reservations) == 6:
                            break
                        await trio.sleep(0.02)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc = await _start(config_path)
    try:
        with trio.fail_after(30):
            await _wait_ready(url)
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/admin/reservations", headers=ADMIN)).json()["reservations"] == []
                records = (await client.get("/admin/usage/records", headers=ADMIN)).json()["records"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    by_request = {}
    for record in records:
        by_request.setdefault(record["request_id"], []).append(record)
    for request_id in done:
        [charge] = by_request.pop(request_id)
        assert (charge["reason"], charge["provenance"]) == ("end", "reported")
    assert sorted(by_request) == sorted(in_flight), "every stream whose client had a byte; no whole answer"
    for [charge] in by_request.values():
        assert (charge["reason"], charge["provenance"]) == ("recovered", "estimated")
        assert charge["amount_micro"] == charge["hold_micro"] > 0
