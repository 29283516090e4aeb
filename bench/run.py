"""Run the benchmark: ``python -m bench.run [--quick] [--arms direct,tollhouse,...] [--profile]``.

One run starts the mock (core 1), every selected gateway (core 0, each frozen with
SIGSTOP while another is measured), probes every arm, then:

* rounds (interleaved, arm order rotated each round): warm-up, latency at c=1,
  wrk at c=10, streams one at a time;
* a capacity pass per arm: open-loop rate search, sustained streams, memory;
* optionally a py-spy profile of Tollhouse under wrk load;

and writes ``bench/results/{latest|quick}.json``, ``.md`` and ``.png`` (plus a dated
copy under ``bench/results/history/``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import trio

from bench import report, scenarios, wrk
from bench import transport as bench_transport
from bench.arms import CLASSES, GATEWAYS, OTHER, REPO, TOOLS, Arm, Gateway, TollhouseOther, Unavailable
from bench.shared_arms import SHARED, BackendServers, TollhouseShared
from bench.procs import (GATEWAY_CORE, LOAD_CORE, CpuMonitor, Pinning, Proc, cores, free_port, group_pids,
                         wait_port)
from bench.scenarios import FULL, QUICK, Settings, lat_summary

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_ARMS = ("direct", "nginx", "bare-asgi", "tollhouse")  # the ones that start in a second
NOT_ATTEMPTED = {
    "bifrost": "not installable offline: the npm package @maximhq/bifrost downloads its Go binary from the "
               "vendor's site at run time (ENOTFOUND here); see shared/BENCH-PEERS.md for its published figures",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Run:
    def __init__(self, settings: Settings, gateways: list[str], translated: bool, profile: bool,
                 workdir: Path, other_checkout: Path | None = None) -> None:
        self.s = settings
        self.other_checkout = other_checkout
        self.gateway_names = gateways
        self.translated = translated
        self.profile = profile
        self.workdir = workdir
        self.t_start = time.monotonic()
        self.deadline = self.t_start + settings.budget_s
        self.mock: Proc | None = None
        self.mock_port = 0
        self.gateways: dict[str, Gateway] = {}
        self.arms: list[Arm] = []
        self.data: dict[str, dict] = {}     # arm name -> figures
        self.samples: dict[str, dict] = {}  # arm name -> pooled raw samples
        self.notes: list[str] = []
        self.cpu = CpuMonitor()
        self.windows: dict[str, list[tuple[float, float]]] = {}  # arm -> measured intervals
        self.transport_result: dict | None = None
        self.pinning = Pinning()
        self.backend: BackendServers | None = None  # Postgres and Redis, for the shared arms

    async def watch_cpu(self) -> None:
        while True:
            await trio.to_thread.run_sync(self.cpu.sample)
            await trio.sleep(1.0)

    # ------------------------------------------------------------ setup

    def start_mock(self) -> None:
        self.mock_port = free_port()
        self.mock = Proc("mock", [sys.executable, "-m", "bench.mock", "--port", str(self.mock_port)], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, log=self.workdir / "mock.log",
                         core=LOAD_CORE)
        self.mock.start()
        if not wait_port(self.mock_port, 15, self.mock):
            raise SystemExit(f"the mock did not start: {self.mock.log_tail()}")
        self.pinning.record("mock", LOAD_CORE, group_pids(self.mock.pid))

    async def start_backend(self) -> None:
        """The shared arms' Postgres and Redis, once, when one of them runs."""
        if not any(name in SHARED for name in self.gateway_names):
            return
        log("starting Postgres and Redis for the shared-backend arms")
        self.backend = BackendServers()
        try:
            await trio.to_thread.run_sync(self.backend.start)
        except Unavailable as exc:
            log(f"  {exc.status}: {exc.reason}")
            return  # the shared arms report themselves not_installed
        TollhouseShared.servers = self.backend

    async def start_gateways(self) -> None:
        await self.start_backend()
        for name in self.gateway_names:
            gw = (TollhouseOther(self.workdir, self.mock_port, self.other_checkout) if name == OTHER
                  else {**CLASSES, **SHARED}[name](self.workdir, self.mock_port))
            self.gateways[name] = gw
            gw_arms = [a for a in gw.arms() if a.protocol == "openai" or self.translated]
            self.arms.extend(gw_arms)
            log(f"starting {name}")
            try:
                await trio.to_thread.run_sync(gw.start)
                gw.status = "ok"
                if gw.proc is not None:
                    self.pinning.record(name, gw.core, group_pids(gw.proc.pid))
            except Unavailable as exc:
                gw.status, gw.reason = exc.status, exc.reason
                for arm in gw_arms:
                    arm.status, arm.reason = exc.status, exc.reason
                log(f"  {name}: {exc.status}: {exc.reason.splitlines()[0]}")
                continue
            for arm in gw_arms:
                try:
                    await scenarios.probe(arm)
                except Exception as exc:  # a probe must not end the run
                    arm.status, arm.reason = "failed", f"probe crashed: {type(exc).__name__}: {exc}"
                log(f"  arm {arm.name}: {arm.status}{' (no streaming)' if arm.ok and not arm.stream_ok else ''}"
                    f"{': ' + arm.reason.splitlines()[0] if arm.reason else ''}")
            if gw.proc is not None:
                await trio.sleep(1.0)
                gw.rss_start_kb = gw.proc.rss_kb()
                if not any(a.ok for a in gw_arms):
                    gw.stop()
                    gw.status = gw_arms[0].status if gw_arms else "failed"
                    gw.reason = gw_arms[0].reason if gw_arms else None
                else:
                    gw.proc.pause()

    def stop_all(self) -> None:
        for gw in self.gateways.values():
            try:
                gw.stop()
            except Exception as exc:
                log(f"stopping {gw.name}: {exc}")
        if self.mock is not None:
            self.mock.stop()
        if self.backend is not None:
            self.backend.stop()

    def gw_of(self, arm: Arm) -> Gateway:
        return self.gateways[arm.gateway]

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------ phases

    async def with_gateway(self, arm: Arm, fn):
        gw = self.gw_of(arm)
        if gw.proc is not None:
            gw.proc.resume()
            await trio.sleep(0.2)
            self.pinning.record(gw.name, gw.core, group_pids(gw.proc.pid))  # workers forked since its start too
        t0 = time.monotonic()
        try:
            return await fn()
        finally:
            self.windows.setdefault(arm.name, []).append((t0, time.monotonic()))
            if gw.proc is not None:
                if not gw.proc.alive():
                    arm.status, arm.reason = "failed", f"{gw.name} exited: {gw.proc.log_tail(5)}"
                gw.proc.pause()

    async def rounds(self) -> None:
        active = [a for a in self.arms if a.ok]
        for r in range(self.s.rounds):
            order = active[r % len(active):] + active[: r % len(active)] if active else []
            for arm in order:
                if not arm.ok:
                    continue
                if self.left() < 60:
                    self.notes.append(f"round {r + 1}: stopped early, time budget")
                    return
                log(f"round {r + 1}/{self.s.rounds}: {arm.name}")
                await self.with_gateway(arm, lambda arm=arm: self.guarded(arm, "round", lambda: self.one_round(arm, r)))

    async def guarded(self, arm: Arm, what: str, fn):
        """Run one scenario; a crash is recorded against the arm, not fatal to the run."""
        try:
            return await fn()
        except Exception as exc:  # noqa: BLE001 -- includes ExceptionGroup from nurseries
            msg = f"{what} crashed: {type(exc).__name__}: {exc}"
            log(f"  {arm.name}: {msg}")
            self.notes.append(f"{arm.name}: {msg}")
            return None

    def wrk_script(self, arm: Arm) -> Path:
        return wrk.script(self.workdir / f"wrk-{arm.name.replace(':', '-')}.lua", "POST", arm.path,
                          {"content-type": "application/json", **arm.headers}, arm.body("events=8", stream=False))

    async def initial_warmup(self) -> None:
        """Once per arm before the rounds: a few seconds of load, so that the first round
        does not measure a cold process (JIT, pools, caches)."""
        for arm in [a for a in self.arms if a.ok]:
            log(f"warm-up: {arm.name}")

            async def go(arm=arm):
                await scenarios.warmup(arm, self.s)
                if wrk.available():
                    await wrk.run(arm.port, self.wrk_script(arm), self.s.wrk_connections, self.s.warm_wrk_seconds,
                                  pinning=self.pinning)

            await self.with_gateway(arm, lambda go=go, arm=arm: self.guarded(arm, "warm-up", go))

    async def one_round(self, arm: Arm, r: int) -> None:
        d = self.data.setdefault(arm.name, {})
        smp = self.samples.setdefault(arm.name, {"lat": [], "ttft": [], "gaps": []})
        await scenarios.warmup(arm, self.s)
        lat = await scenarios.latency_c1(arm, self.s)
        smp["lat"].extend(lat.pop("_samples"))
        d.setdefault("latency_rounds", []).append(lat)
        if wrk.available():
            lua = self.wrk_script(arm)
            try:
                # an unmeasured second first: JIT-compiled peers (Portkey on node) need load to warm
                await wrk.run(arm.port, lua, self.s.wrk_connections, 1)
                w = await wrk.run(arm.port, lua, self.s.wrk_connections, self.s.wrk_seconds, pinning=self.pinning)
            except (RuntimeError, trio.TooSlowError) as exc:
                w = {"error": str(exc)[:300]}
            d.setdefault("wrk_rounds", []).append(w)
        if arm.stream_ok:
            st = await scenarios.streaming(arm, self.s, self.mock_port, self.gw_of(arm))
            smp["ttft"].extend(st.pop("_ttft"))
            smp["gaps"].extend(st.pop("_gaps"))
            d.setdefault("stream_rounds", []).append(st)

    async def transport(self) -> None:
        """The upstream-client comparison, with every gateway frozen."""
        need = self.s.rounds * 5 * (self.s.transport_seconds + 3)
        if self.left() < need + 60:
            self.notes.append("transport scenario skipped: time budget")
            return
        log("transport: pool vs httpx2 against the mock")
        try:
            self.transport_result = await bench_transport.scenario(
                self.mock_port, self.s.rounds, self.s.transport_seconds, GATEWAY_CORE if cores() > 1 else None)
        except (OSError, RuntimeError, ValueError, trio.TooSlowError) as exc:
            self.notes.append(f"transport scenario crashed: {type(exc).__name__}: {exc}")

    async def capacity(self) -> None:
        for arm in [a for a in self.arms if a.ok]:
            if self.left() < 45:
                self.notes.append(f"capacity pass skipped for {arm.name}: time budget")
                continue
            log(f"capacity: {arm.name}")
            await self.with_gateway(arm, lambda arm=arm: self.one_capacity(arm))

    async def one_capacity(self, arm: Arm) -> None:
        d = self.data.setdefault(arm.name, {})
        gw = self.gw_of(arm)
        await scenarios.warmup(arm, self.s)
        log("  open-loop search")
        r = await self.guarded(arm, "open-loop search",
                               lambda: scenarios.open_loop_search(arm, self.s, self.deadline))
        if r is not None:
            d["open_loop"] = r
        if arm.stream_ok:
            log("  sustained streams")
            r = await self.guarded(arm, "sustained streams", lambda: scenarios.sustained(arm, self.s, self.deadline))
            if r is not None:
                d["sustained"] = r
            if gw.proc is not None:
                log("  memory")
                await trio.sleep(1.0)
                r = await self.guarded(arm, "memory",
                                       lambda: scenarios.memory(arm, gw, self.s, self.mock_port, self.deadline))
                if r is not None:
                    r["start_kb"] = getattr(gw, "rss_start_kb", None)  # right after the first start
                    d["memory"] = r

    async def run_profile(self) -> None:
        gw = self.gateways.get("tollhouse")
        arm = next((a for a in self.arms if a.name == "tollhouse" and a.ok), None)
        spy = TOOLS / "tools-venv" / "bin" / "py-spy"
        if gw is None or arm is None:
            return
        if not spy.exists() or not wrk.available():
            self.notes.append(f"profile skipped: {spy} or wrk missing (bench/setup.sh)")
            return
        log("profiling tollhouse under wrk c=10 (py-spy)")
        lua = self.wrk_script(arm)
        out: dict = {}

        async def record(fmt: str, path: Path, extra: list[str]) -> bool:
            argv = ["taskset", "-c", str(LOAD_CORE), str(spy), "record", "--pid", str(gw.proc.pid), "--rate", "250",
                    "--duration", "8", "--nonblocking", "--threads", *extra, "--format", fmt, "--output", str(path)]
            async with trio.open_nursery() as n:
                n.start_soon(wrk.run, arm.port, lua, self.s.wrk_connections, 10)
                await trio.sleep(0.5)
                p = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
            if p.returncode != 0:
                out["error"] = p.stderr.decode(errors="replace")[-400:]
                return False
            return True

        async def go():
            raw, gil = self.workdir / "profile.txt", self.workdir / "profile-gil.txt"
            if not await record("raw", raw, []):
                return
            out.update(report.summarise_profile(raw.read_text()))
            if await record("raw", gil, ["--gil"]):
                g = report.summarise_profile(gil.read_text())
                out["gil"] = {k: g.get(k) for k in ("samples", "by_package", "top_self", "top_self_chains")}
            if await record("flamegraph", RESULTS / "profile-tollhouse.svg", []):
                out["flamegraph"] = "bench/results/profile-tollhouse.svg"

        await self.with_gateway(arm, go)
        self.profile_result = out

    # ------------------------------------------------------------ aggregate

    def aggregate(self) -> dict:
        direct = self.samples.get("direct", {})
        d_lat = lat_summary(direct.get("lat", []))
        d_ttft = lat_summary(direct.get("ttft", []))
        d_gap = lat_summary(direct.get("gaps", []))
        out = {}
        for arm in self.arms:
            a = {"status": arm.status, "reason": arm.reason, "gateway": arm.gateway, "protocol": arm.protocol,
                 "streaming": arm.stream_ok}
            d = self.data.get(arm.name, {})
            smp = self.samples.get(arm.name, {})
            if smp.get("lat"):
                lat = lat_summary(smp["lat"])
                rounds = d.get("latency_rounds", [])
                drounds = self.data.get("direct", {}).get("latency_rounds", [])
                a["latency_c1"] = {
                    **lat, "errors": sum(r.get("errors", 0) for r in rounds),
                    "added_p50_ms": _sub(lat.get("p50_ms"), d_lat.get("p50_ms")),
                    "added_p99_ms": _sub(lat.get("p99_ms"), d_lat.get("p99_ms")),
                    "added_p50_ms_by_round": [_sub(x.get("p50_ms"), y.get("p50_ms")) for x, y in zip(rounds, drounds)],
                    "rounds": rounds,
                }
            wr = [w for w in d.get("wrk_rounds", []) if "rps" in w]
            if wr:
                a["throughput_c10"] = {
                    "rps": round(_median([w["rps"] for w in wr]), 1),
                    "p50_ms": round(_median([w["p50_ms"] for w in wr]), 3),
                    "p99_ms": round(_median([w["p99_ms"] for w in wr]), 3),
                    "errors": sum(w["errors"] for w in wr), "rounds": d.get("wrk_rounds")}
            elif d.get("wrk_rounds"):
                a["throughput_c10"] = {"error": d["wrk_rounds"][0].get("error"), "rounds": d["wrk_rounds"]}
            if "open_loop" in d:
                a["open_loop"] = d["open_loop"]
            sr = d.get("stream_rounds", [])
            if sr:
                ttft, gap = lat_summary(smp.get("ttft", [])), lat_summary(smp.get("gaps", []))
                a["streaming"] = {
                    "streams": sum(x["streams"] for x in sr), "complete": sum(x["complete"] for x in sr),
                    "bytes_identical": (sum(x["bytes_identical"] for x in sr) if arm.protocol == "openai" else None),
                    "client_usage_ok": sum(x["client_usage_ok"] for x in sr),
                    "events": sr[0]["events"], "pace_ms": sr[0]["pace_ms"],
                    "ttft": ttft, "gap": gap,
                    "added_ttft_p50_ms": _sub(ttft.get("p50_ms"), d_ttft.get("p50_ms")),
                    "added_ttft_p99_ms": _sub(ttft.get("p99_ms"), d_ttft.get("p99_ms")),
                    "added_gap_p50_ms": _sub(gap.get("p50_ms"), d_gap.get("p50_ms")),
                    "added_gap_p99_ms": _sub(gap.get("p99_ms"), d_gap.get("p99_ms")),
                    "added_gap_mean_ms": _sub(gap.get("mean_ms"), d_gap.get("mean_ms")),
                    "problems": [p for x in sr for p in x["problems"]][:3],
                    "rounds": sr,
                }
                checks = [x["usage_check"] for x in sr if "usage_check" in x]
                if checks:
                    a["streaming"]["usage_check"] = {"ok": all(c["ok"] for c in checks), "rounds": checks}
            for key in ("sustained", "memory"):
                if key in d:
                    a[key] = d[key]
            a["background_cpu"] = self.background(self.windows.get(arm.name, []))
            out[arm.name] = a
        return out

    def background(self, windows: list) -> dict | None:
        xs = [s for s in self.cpu.samples if any(t0 <= s[0] <= t1 for t0, t1 in windows)]
        if not xs:
            return None
        return {"foreign_cores_mean": round(sum(s[1] for s in xs) / len(xs), 3),
                "foreign_cores_max": round(max(s[1] for s in xs), 3),
                "steal_cores_mean": round(sum(s[2] for s in xs) / len(xs), 3), "samples": len(xs)}

    def ratios(self, arms: dict) -> dict:
        def get(name, *path):
            cur = arms.get(name)
            for p in path:
                if not isinstance(cur, dict):
                    return None
                cur = cur.get(p)
            return cur

        out = {}
        th, ng = get("tollhouse", "latency_c1", "added_p50_ms"), get("nginx", "latency_c1", "added_p50_ms")
        th99, ng99 = get("tollhouse", "latency_c1", "added_p99_ms"), get("nginx", "latency_c1", "added_p99_ms")
        out["added_latency_p50_tollhouse_over_nginx"] = _ratio(th, ng, floor=0.005)
        out["added_latency_p99_tollhouse_over_nginx"] = _ratio(th99, ng99, floor=0.005)
        for peer in ("litellm", "portkey"):
            out[f"throughput_c10_tollhouse_over_{peer}"] = _ratio(get("tollhouse", "throughput_c10", "rps"),
                                                                  get(peer, "throughput_c10", "rps"))
            out[f"open_loop_tollhouse_over_{peer}"] = _ratio(get("tollhouse", "open_loop", "max_rate"),
                                                             get(peer, "open_loop", "max_rate"))
            out[f"added_latency_p50_tollhouse_over_{peer}"] = _ratio(th, get(peer, "latency_c1", "added_p50_ms"),
                                                                     floor=0.005)
            out[f"throughput_c10_tollhouse_anthropic_over_{peer}_anthropic"] = _ratio(
                get("tollhouse:anthropic", "throughput_c10", "rps"), get(f"{peer}:anthropic", "throughput_c10", "rps"))
        # the floor: hypercorn and the upstream pool alone (bench.bare_asgi); what Tollhouse adds over it
        # is its own code, and a peer's figure over twice the floor's is out of hypercorn's reach
        bare = "bare-asgi"
        out["added_latency_p50_tollhouse_minus_bare_ms"] = _sub(th, get(bare, "latency_c1", "added_p50_ms"))
        out["added_ttft_p50_tollhouse_minus_bare_ms"] = _sub(get("tollhouse", "streaming", "added_ttft_p50_ms"),
                                                             get(bare, "streaming", "added_ttft_p50_ms"))
        out["throughput_c10_tollhouse_over_bare"] = _ratio(get("tollhouse", "throughput_c10", "rps"),
                                                           get(bare, "throughput_c10", "rps"))
        out["throughput_c10_bare_over_portkey"] = _ratio(get(bare, "throughput_c10", "rps"),
                                                         get("portkey", "throughput_c10", "rps"))
        out["open_loop_bare_over_portkey"] = _ratio(get(bare, "open_loop", "max_rate"),
                                                    get("portkey", "open_loop", "max_rate"))
        out["throughput_c10_tollhouse_over_nginx"] = _ratio(get("tollhouse", "throughput_c10", "rps"),
                                                            get("nginx", "throughput_c10", "rps"))
        shared, two = "tollhouse-shared", "tollhouse-shared-2w"  # what shared state costs, what a worker gains
        out["added_latency_p50_shared_minus_local_ms"] = _sub(get(shared, "latency_c1", "added_p50_ms"), th)
        out["added_latency_p99_shared_minus_local_ms"] = _sub(get(shared, "latency_c1", "added_p99_ms"), th99)
        out["throughput_c10_shared_over_local"] = _ratio(get(shared, "throughput_c10", "rps"),
                                                         get("tollhouse", "throughput_c10", "rps"))
        out["throughput_c10_shared_2w_over_1w"] = _ratio(get(two, "throughput_c10", "rps"),
                                                         get(shared, "throughput_c10", "rps"))
        out["open_loop_shared_2w_over_1w"] = _ratio(get(two, "open_loop", "max_rate"),
                                                    get(shared, "open_loop", "max_rate"))
        return out


def ab_ratios(arms: dict) -> dict:
    """The other checkout's figures over this one's (``--gateway-b``): pooled over the
    run, and the median of the per-round ratios, which a host whose load drifts between
    rounds skews less (both arms of a round run within seconds of each other)."""
    out: dict = {}
    for suffix in ("", ":anthropic"):
        a, b = arms.get("tollhouse" + suffix) or {}, arms.get(OTHER + suffix) or {}
        if not a or not b:
            continue
        tag = suffix.replace(":", " ")

        def rounds(arm, scenario, key):
            return [x.get(key) for x in (arm.get(scenario) or {}).get("rounds", [])]

        lat_a = (a.get("latency_c1") or {}).get("added_p50_ms_by_round", [])
        lat_b = (b.get("latency_c1") or {}).get("added_p50_ms_by_round", [])
        out[f"added latency c=1 p50{tag}"] = _ratio(_g(b, "latency_c1", "added_p50_ms"),
                                                    _g(a, "latency_c1", "added_p50_ms"), floor=0.005)
        out[f"added latency c=1 p50{tag}, per-round median"] = _paired(lat_b, lat_a)
        out[f"added latency c=1 p99{tag}"] = _ratio(_g(b, "latency_c1", "added_p99_ms"),
                                                    _g(a, "latency_c1", "added_p99_ms"), floor=0.005)
        out[f"req/s wrk c=10{tag}"] = _ratio(_g(b, "throughput_c10", "rps"), _g(a, "throughput_c10", "rps"))
        out[f"req/s wrk c=10{tag}, per-round median"] = _paired(rounds(b, "throughput_c10", "rps"),
                                                               rounds(a, "throughput_c10", "rps"))
        out[f"added TTFT p50{tag}"] = _ratio(_g(b, "streaming", "added_ttft_p50_ms"),
                                             _g(a, "streaming", "added_ttft_p50_ms"), floor=0.005)
    return out


def _g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _paired(bs: list, as_: list):
    xs = [b / a for b, a in zip(bs, as_) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0.005]
    return round(_median(xs), 2) if xs else None


def _sub(a, b):
    return None if a is None or b is None else round(a - b, 4)


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _ratio(a, b, floor: float = 0.0):
    if a is None or b is None:
        return None
    if b <= floor:
        return None
    return round(a / b, 2)


# ---------------------------------------------------------------- environment


#: what the tree's state is read over: all of it but the results, which a run writes itself
OWN_CODE = ("--", ".", ":(exclude)bench/results")


def environment_sha() -> str:
    """This checkout's commit, short, with ``+dirty`` when its tree has changes."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except OSError:
            return ""
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no",
                                                                    *OWN_CODE) else "")


def environment(gateways: dict, pinning: Pinning) -> dict:
    from importlib import metadata

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            return ""

    diff = git("diff", "HEAD", *OWN_CODE)
    status = git("status", "--porcelain", *OWN_CODE)
    versions = {"python": platform.python_version()}
    for gw in gateways.values():
        versions.update(gw.versions)
    if wrk.available():
        versions["wrk"] = wrk.version()
    for dist in ("trio", "attrs"):
        versions.setdefault(dist, metadata.version(dist))
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "git": {"sha": git("rev-parse", "HEAD").strip(), "dirty": bool(status.strip()),
                "changed_files": [ln[3:] for ln in status.splitlines()][:50],
                "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None},
        "versions": versions,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                    "pinning": pinning.report()},
    }


# ---------------------------------------------------------------- main


async def amain(args) -> int:
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = attrs.evolve(settings, rounds=args.rounds)
    if args.only == "transport":
        args.arms = "direct"
    arms_arg = args.arms or ",".join(QUICK_ARMS if args.quick else GATEWAYS)
    names = [n.strip() for n in arms_arg.split(",") if n.strip()]
    other = Path(args.gateway_b).resolve() if args.gateway_b else None
    if other is not None and OTHER not in names:
        names.insert(names.index("tollhouse") + 1 if "tollhouse" in names else len(names), OTHER)
    bad = [n for n in names if n not in GATEWAYS and not (n == OTHER and other is not None)]
    if bad:
        print(f"unknown arms {bad}; choose from {','.join(GATEWAYS)}", file=sys.stderr)
        return 2
    if "direct" not in names:
        names.insert(0, "direct")
    if cores() > 1:
        os.sched_setaffinity(0, {LOAD_CORE})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="tollhouse-bench-"))
    started = dt.datetime.now(dt.timezone.utc)
    run = Run(settings, names, not args.no_translated, args.profile, workdir, other)
    run.pinning.record("bench (Python load client)", LOAD_CORE, [os.getpid()])
    run.profile_result = None
    log(f"mode {settings.mode}; arms {','.join(names)}; workdir {workdir}")
    if not wrk.available():
        run.notes.append("wrk is not installed: closed-loop throughput skipped (apt-get install wrk; bench/setup.sh)")
    run.cpu.sample()
    await trio.sleep(1.0)
    run.cpu.sample()
    before = run.cpu.samples[-1][1] if run.cpu.samples else None
    if before is not None and before > 0.2:
        run.notes.append(f"the machine was already busy before the run: {before:.2f} cores used by other processes")
    try:
        async with trio.open_nursery() as watcher:
            watcher.start_soon(run.watch_cpu)
            run.start_mock()
            log(f"mock on 127.0.0.1:{run.mock_port}")
            if args.only == "transport":
                await run.transport()
            else:
                await run.start_gateways()
                await run.initial_warmup()
                await run.rounds()
                if args.only != "rounds":
                    await run.transport()
                    await run.capacity()
                if args.profile:
                    await run.run_profile()
            watcher.cancel_scope.cancel()
    finally:
        run.stop_all()
    for problem in run.pinning.mismatches():
        run.notes.append(f"pinning not as meant: {problem}")
    arms = run.aggregate()
    doc = {
        "schema": 1,
        "mode": settings.mode,
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - run.t_start, 1),
        **environment(run.gateways, run.pinning),
        "settings": attrs.asdict(settings),
        "gateways": {g.name: {"status": g.status, "reason": g.reason, "port_note": "loopback only"}
                     for g in run.gateways.values()},
        "arms": arms,
        "ratios": run.ratios(arms),
        **({"ab": {"a": environment_sha(), "b": run.gateways[OTHER].versions.get(OTHER, {}).get("commit"),
                   "ratios": ab_ratios(arms)}} if OTHER in run.gateways else {}),
        "profile": run.profile_result,
        "transport": run.transport_result,
        "background_cpu": {"before_run_cores": before,
                           **(run.background([(run.t_start, time.monotonic())]) or {})},
        "notes": run.notes,
        "peers_not_attempted": NOT_ATTEMPTED,
    }
    stem = args.out or (args.only if args.only else "latest" if settings.mode == "full" else "quick")
    json_path = RESULTS / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    hist = RESULTS / "history"
    hist.mkdir(exist_ok=True)
    shutil.copy(json_path, hist / f"{started.strftime('%Y%m%dT%H%M%SZ')}-{args.only or settings.mode}.json")
    png = RESULTS / f"{stem}.png"
    if args.only == "transport":
        md = report.only_markdown(doc)
    else:
        plot_note = report.plot(json_path, png)
        md = report.markdown(doc, png.name if png.exists() else None, plot_note)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)
    log(f"wrote {json_path}, {RESULTS / (stem + '.md')}{', ' + str(png) if png.exists() else ''} "
        f"in {doc['duration_s']:.0f}s")
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="Tollhouse benchmark harness")
    ap.add_argument("--quick", action="store_true", help="one short round and small levels (~2 min)")
    ap.add_argument("--arms", help=f"comma-separated gateways, from {','.join(GATEWAYS)} (default: all; with "
                                   f"--quick: {','.join(QUICK_ARMS)}); direct is always run")
    ap.add_argument("--no-translated", action="store_true", help="skip the Anthropic Messages -> OpenAI arms")
    ap.add_argument("--rounds", type=int, help="override the number of interleaved rounds")
    ap.add_argument("--profile", action="store_true", help="py-spy profile of tollhouse under wrk c=10")
    ap.add_argument("--out", help="result file stem under bench/results (default latest / quick)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep configs and gateway logs")
    ap.add_argument("--only", choices=["transport", "rounds"],
                    help="run one part alone: transport = the gateway's upstream pool vs httpx2 on the mock; "
                         "rounds = the interleaved rounds (latency c=1, wrk c=10, streams), no capacity pass")
    ap.add_argument("--gateway-b", metavar="CHECKOUT",
                    help=f"also run Tollhouse from another checkout (its own CHECKOUT/.venv) as the arm {OTHER}, "
                         "interleaved with this one: an A/B of two versions in one run")
    args = ap.parse_args(argv)
    return trio.run(amain, args)


if __name__ == "__main__":
    sys.exit(main())
