"""The transport scenario: the gateway's upstream client against httpx2, on the mock.

Why: the gateway keeps its own HTTP/1.1 pool (providers/http11.py) instead of the
client the official SDKs ride on, and that choice stays honest only if it is measured
in the same run. Each client runs in its own process pinned to the gateway's core
(the mock keeps the load core), one client at a time, rounds interleaved:

* ``c10``  10 tasks share one client and post non-streaming requests back to back:
  whole responses (head and body read) per second;
* ``c1``   one request at a time: latency percentiles. *Added* p50 is the client's p50
  minus that of the bench's raw socket client (bench/client.py, one pre-rendered
  request on one connection), measured the same way on the same core.

Run alone: ``python -m bench.run --only transport``; one measurement by hand:
``python -m bench.transport --port 9000 --client pool --mode c10 --seconds 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent

CLIENTS = ("pool", "httpx2")
PATH = "/v1/chat/completions"
BODY = json.dumps({"model": "mock", "max_tokens": 256, "messages": [
    {"role": "user", "content": "Reply as the bench mock says. bench:events=8"}]}, separators=(",", ":")).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench", "accept-encoding": "identity"}


class _PoolClient:
    def __init__(self, port: int) -> None:
        from providers.http11 import Pool

        self.pool = Pool(f"http://127.0.0.1:{port}", env={})
        self.headers = list(HEADERS.items())

    async def post(self) -> int:
        response = await self.pool.request("POST", PATH, self.headers, BODY)
        try:
            await response.read()
        finally:
            await response.aclose()
        return response.status

    async def aclose(self) -> None:
        await self.pool.aclose()


class _Httpx2Client:
    def __init__(self, port: int) -> None:
        import httpx2

        self.client = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30,
                                         limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100))

    async def post(self) -> int:
        response = await self.client.post(PATH, content=BODY, headers=HEADERS)
        return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


class _RawClient:
    """The baseline: the bench's own socket client, one pre-rendered request, no pool."""

    def __init__(self, port: int) -> None:
        from bench import client
        from bench.arms import Arm

        self.port = port
        self.raw = Arm("direct", "direct", "openai", port=port).request("events=8", stream=False)
        self.conn: client.Conn | None = None

    async def post(self) -> int:
        from bench import client

        if self.conn is None or self.conn.closed:
            self.conn = await client.Conn.open(self.port)
        status, _body = await self.conn.request(self.raw)
        return status

    async def aclose(self) -> None:
        if self.conn is not None:
            await self.conn.aclose()


def _client(name: str, port: int):
    return {"pool": _PoolClient, "httpx2": _Httpx2Client, "raw": _RawClient}[name](port)


async def measure(name: str, port: int, mode: str, seconds: float) -> dict:
    """One measurement of one client: ``c10`` throughput or ``c1`` latencies."""
    client = _client(name, port)
    now = time.perf_counter
    errors = 0
    try:
        for _ in range(200):  # warm: connections open, code paths hot
            await client.post()
        if mode == "c1":
            lat = []
            deadline = now() + seconds
            while now() < deadline and len(lat) < 200_000:
                t0 = now()
                status = await client.post()
                lat.append(now() - t0)
                errors += status != 200
            return {"client": name, "mode": mode, "latencies": lat, "errors": errors}
        done = 0
        t_end = now() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while now() < t_end:
                status = await client.post()
                done += 1
                errors += status != 200

        t0 = now()
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(worker)
        return {"client": name, "mode": mode, "responses": done, "seconds": now() - t0,
                "rps": done / (now() - t0), "errors": errors}
    finally:
        await client.aclose()


async def _child(name: str, port: int, mode: str, seconds: float, core: int | None) -> dict:
    argv = [sys.executable, "-m", "bench.transport", "--port", str(port), "--client", name, "--mode", mode,
            "--seconds", str(seconds)]
    if core is not None:
        argv = ["taskset", "-c", str(core)] + argv
    with trio.fail_after(seconds + 60):
        p = await trio.run_process(argv, cwd=str(REPO), capture_stdout=True, capture_stderr=True, check=False,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    if p.returncode != 0:
        return {"client": name, "mode": mode, "error": p.stderr.decode(errors="replace")[-400:]}
    return json.loads(p.stdout)


async def scenario(mock_port: int, rounds: int, seconds: float, core: int | None) -> dict:
    """Every client, ``rounds`` times interleaved (order rotated): c10 whole responses/s
    (median over rounds) and c1 latency (samples pooled), with the added p50 over the
    raw socket client measured in the same rounds."""
    from bench.scenarios import lat_summary

    per: dict[str, dict] = {name: {"rps": [], "lat": [], "errors": 0, "problems": []} for name in CLIENTS}
    baseline: list[float] = []
    for r in range(rounds):
        order = CLIENTS[r % len(CLIENTS):] + CLIENTS[: r % len(CLIENTS)]
        base_run = await _child("raw", mock_port, "c1", seconds, core)
        baseline += base_run.get("latencies", [])
        for name in order:
            for mode in ("c10", "c1"):
                out = await _child(name, mock_port, mode, seconds, core)
                d = per[name]
                if "error" in out:
                    d["problems"].append(f"{mode}: {out['error']}")
                    continue
                d["errors"] += out["errors"]
                if mode == "c10":
                    d["rps"].append(round(out["rps"], 1))
                else:
                    d["lat"] += out["latencies"]
    base = lat_summary(baseline)
    clients = {}
    for name, d in per.items():
        lat = lat_summary(d["lat"])
        rps = sorted(d["rps"])
        clients[name] = {
            "rps_c10": rps[len(rps) // 2] if rps else None, "rps_c10_rounds": d["rps"],
            "latency_c1": lat,
            "added_p50_ms": (round(lat["p50_ms"] - base["p50_ms"], 4)
                             if lat.get("p50_ms") is not None and base.get("p50_ms") is not None else None),
            "errors": d["errors"], "problems": d["problems"][:3],
        }
    pool, other = clients["pool"].get("rps_c10"), clients["httpx2"].get("rps_c10")
    return {"rounds": rounds, "seconds": seconds, "client_core": core, "baseline_c1": base, "clients": clients,
            "rps_c10_pool_over_httpx2": round(pool / other, 2) if pool and other else None,
            "versions": _versions()}


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for dist in ("httpx2", "h11"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.transport", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--client", choices=CLIENTS + ("raw",), required=True)
    ap.add_argument("--mode", choices=("c1", "c10"), required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    print(json.dumps(trio.run(measure, args.client, args.port, args.mode, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
