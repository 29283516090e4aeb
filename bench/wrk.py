"""Closed-loop load with wrk (C, epoll): one thread, N keep-alive connections.

The request comes from a generated Lua script; ``done()`` prints one JSON line with
the counts, the error classes and the latency percentiles, so nothing is scraped from
wrk's human-readable report.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import partial
from pathlib import Path

import trio

from bench.procs import LOAD_CORE, Pinning, cores

_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,' ..
    '"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"mean_us":%.1f,"max_us":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
'''


def available() -> bool:
    return shutil.which("wrk") is not None


def version() -> str:
    import subprocess

    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _lua_str(s: str) -> str:
    eq = "=" * 4
    assert f"]{eq}]" not in s
    return f"[{eq}[{s}]{eq}]"


def script(path: Path, method: str, url_path: str, headers: dict, body: bytes) -> Path:
    lines = [f"wrk.method = {_lua_str(method)}", f"wrk.path = {_lua_str(url_path)}"]
    for k, v in headers.items():
        lines.append(f"wrk.headers[ {_lua_str(k)} ] = {_lua_str(v)}")
    lines.append(f"wrk.body = {_lua_str(body.decode())}")
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


async def run(port: int, lua: Path, connections: int, seconds: float, timeout_s: float = 10.0,
              pinning: Pinning | None = None) -> dict:
    """One wrk run; with ``pinning``, wrk's cores are read while it runs and recorded."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={int(timeout_s)}s",
            "-s", str(lua), f"http://127.0.0.1:{port}"]
    if cores() > 1:
        argv = ["taskset", "-c", str(LOAD_CORE)] + argv
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        with trio.fail_after(seconds + timeout_s + 30):
            async with trio.open_nursery() as nursery:
                proc = await nursery.start(partial(trio.run_process, argv, stdout=stdout, stderr=stderr, check=False))
                if pinning is not None:
                    await trio.sleep(0.3)  # past taskset's exec: wrk runs for a second at least
                    pinning.record("wrk", LOAD_CORE, [proc.pid])
        stdout.seek(0)
        stderr.seek(0)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            doc = json.loads(line[8:])
            secs = doc["duration_us"] / 1e6
            errors = sum(doc[k] for k in doc if k.startswith("err_"))
            return {
                "rps": doc["requests"] / secs if secs else 0.0,
                "requests": doc["requests"],
                "seconds": secs,
                "errors": errors,
                "errors_by_kind": {k[4:]: doc[k] for k in doc if k.startswith("err_") and doc[k]},
                "p50_ms": doc["p50_us"] / 1e3, "p90_ms": doc["p90_us"] / 1e3, "p99_ms": doc["p99_us"] / 1e3,
                "p999_ms": doc["p999_us"] / 1e3, "mean_ms": doc["mean_us"] / 1e3, "max_ms": doc["max_us"] / 1e3,
                "connections": connections,
            }
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}): {err[-500:]} {out[-300:]}")
