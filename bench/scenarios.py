"""The scenarios, each a bounded measurement of one arm.

1. ``latency_c1``   one request at a time, non-streaming: latency percentiles
2. ``throughput``   wrk closed loop at 10 connections; ``open_loop_search`` for the
                    highest fixed rate whose p99 stays under the limit with no errors
3. ``streaming``    one stream at a time (64 events x 20 ms): time to first token,
                    gaps between events, every byte / every token delivered, usage
4. ``sustained``    many concurrent streams at 20 ms pacing: the largest count where
                    every event arrives and no gap exceeds 10x the pacing
5. ``memory``       gateway RSS idle and per open stream (held open by the mock)

Each returns plain dicts (figures in ms, KB, req/s) plus, where the caller pools
samples across rounds, the raw samples under keys starting with ``_``.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time

import attrs
import trio

from bench import client, mock
from bench.arms import Arm, Gateway
from bench.client import StreamRecord, percentile


@attrs.define
class Settings:
    mode: str
    rounds: int
    warmup_requests: int
    s1_seconds: float
    s1_max: int
    wrk_seconds: float
    warm_wrk_seconds: float
    wrk_connections: int
    s3_streams: int
    s3_events: int
    s3_pace_ms: float
    ol_step_seconds: float
    ol_start: int
    ol_cap: int
    ol_min: int
    ol_bisect: int
    ol_p99_ms: float
    s4_levels: tuple
    s4_events: int
    s4_pace_ms: float
    s4_ramp_s: float
    s5_levels: tuple
    s5_ramp_per_s: float
    s5_pace_ms: float
    s5_open_timeout_s: float
    budget_s: float
    transport_seconds: float = 3.0


FULL = Settings(mode="full", rounds=3, warmup_requests=300, s1_seconds=3.0, s1_max=5000, wrk_seconds=4,
                warm_wrk_seconds=3, wrk_connections=10, s3_streams=4, s3_events=64, s3_pace_ms=20, ol_step_seconds=3.0, ol_start=100,
                ol_cap=25600, ol_min=10, ol_bisect=3, ol_p99_ms=50.0, s4_levels=(50, 100, 200, 300, 500, 750, 1000),
                s4_events=100, s4_pace_ms=20, s4_ramp_s=1.0, s5_levels=(100, 1000), s5_ramp_per_s=250.0,
                s5_pace_ms=2000, s5_open_timeout_s=25.0, budget_s=40 * 60)
QUICK = attrs.evolve(FULL, mode="quick", rounds=1, warmup_requests=100, s1_seconds=1.0, s1_max=2000,
                     wrk_seconds=2, warm_wrk_seconds=1, s3_streams=2, ol_step_seconds=1.0, ol_bisect=1, s4_levels=(50, 100),
                     s4_events=50, s5_levels=(100,), s5_open_timeout_s=15.0, budget_s=5 * 60,
                     transport_seconds=1.0)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 4)


def lat_summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    return {"n": len(samples), "p50_ms": ms(percentile(samples, 50)), "p90_ms": ms(percentile(samples, 90)),
            "p99_ms": ms(percentile(samples, 99)), "p999_ms": ms(percentile(samples, 99.9)),
            "mean_ms": ms(statistics.fmean(samples)), "min_ms": ms(min(samples)), "max_ms": ms(max(samples))}


# ---------------------------------------------------------------- small helpers


async def get_json(port: int, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict]:
    conn = await client.Conn.open(port)
    try:
        with trio.fail_after(30):
            status, body = await conn.request(client.build_request(port, method, path, headers or {},
                                                                    b"" if method == "POST" else None))
    finally:
        await conn.aclose()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {"_raw": body[:300].decode(errors="replace")}


async def mock_stats(mock_port: int) -> dict:
    return (await get_json(mock_port, "/mock/stats"))[1]


async def mock_release(mock_port: int, group: str) -> None:
    await get_json(mock_port, f"/mock/release?group={group}", method="POST")


def response_text(arm: Arm, body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    try:
        if arm.protocol == "anthropic":
            return "".join(part.get("text", "") for part in doc["content"])
        return doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


def error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        err = doc.get("error", doc)
        msg = err.get("message") if isinstance(err, dict) else str(err)
        return str(msg or doc)[:300]
    except (ValueError, AttributeError):
        return body[:300].decode(errors="replace")


# ---------------------------------------------------------------- probe and warm-up


async def probe(arm: Arm) -> None:
    """Decide whether an arm works here: one answer and one short stream, both checked."""
    conn = await client.Conn.open(arm.port)
    try:
        with trio.fail_after(60):
            status, body = await conn.request(arm.request("events=8", stream=False))
    except (trio.TooSlowError, OSError, client.ProtocolError, trio.BrokenResourceError) as exc:
        arm.status, arm.reason = "failed", f"probe request failed: {type(exc).__name__}: {exc}"
        return
    finally:
        await conn.aclose()
    if status == 404 and arm.protocol == "anthropic":
        arm.status = "unavailable"
        arm.reason = f"POST {arm.path} answered 404: no Anthropic Messages front door ({error_message(body)})"
        return
    if status != 200:
        arm.status = "n/a" if arm.protocol == "anthropic" else "failed"
        arm.reason = f"POST {arm.path} answered {status}: {error_message(body)}"
        return
    text = response_text(arm, body)
    if text != mock.expected_text(8):
        arm.status, arm.reason = "failed", f"wrong reply text {text!r}"
        return
    arm.status = "ok"
    rec = await client.one_stream(arm.port, arm.request("events=4,pace_ms=5", stream=True), timeout=60)
    a = client.analyse_stream(rec)
    if a["status"] == 200 and a["text"] == mock.expected_text(4) and a["terminal"]:
        arm.stream_ok = True
    else:
        arm.reason = (f"streaming does not work: status {a['status']}, error {a['error']}, "
                      f"text {a['text'][:40]!r}, {a['stream_errors'][:1]}")


async def warmup(arm: Arm, settings: Settings) -> None:
    raw = arm.request("events=8", stream=False)
    await client.sequential(arm.port, raw, settings.warmup_requests, 2.0, min_count=10)
    if arm.stream_ok:
        await client.one_stream(arm.port, arm.request("events=8,pace_ms=2", stream=True), timeout=30)


# ---------------------------------------------------------------- 1. latency


async def latency_c1(arm: Arm, settings: Settings) -> dict:
    r = await client.sequential(arm.port, arm.request("events=8", stream=False), settings.s1_max,
                                settings.s1_seconds)
    return {**lat_summary(r["latencies"]), "errors": r["errors"], "last_error": r["last_error"],
            "_samples": r["latencies"]}


# ---------------------------------------------------------------- 2. throughput


async def open_loop_search(arm: Arm, settings: Settings, deadline: float) -> dict:
    """Stepwise: double from ``ol_start`` while a step passes (halve while it fails),
    then bisect between the last pass and the first fail; every step is bounded."""
    raw = arm.request("events=8", stream=False)
    steps = []

    async def trial(rate: int) -> bool:
        r = await client.open_loop(arm.port, raw, rate, settings.ol_step_seconds)
        p99 = percentile(r["latencies"], 99)
        ok = r["errors"] == 0 and p99 is not None and p99 * 1000 <= settings.ol_p99_ms
        steps.append({"rate": rate, "pass": ok, "answered": len(r["latencies"]), "errors": r["errors"],
                      "p50_ms": ms(percentile(r["latencies"], 50)), "p99_ms": ms(p99),
                      "peak_busy_connections": r["peak_busy"], "reconnects": r["reconnects"],
                      "client_lag_max_ms": round(r["schedule_lag_max_ms"], 2),
                      "last_error": r["last_error"]})
        await trio.sleep(0.3 if ok else 2.0)  # let a swamped gateway drain before the next step
        return ok

    def out_of_time() -> bool:
        return time.monotonic() + settings.ol_step_seconds + 15 > deadline

    best = fail = None
    rate = settings.ol_start
    if await trial(rate):
        best = rate
        while rate * 2 <= settings.ol_cap and not out_of_time():
            rate *= 2
            if await trial(rate):
                best = rate
            else:
                fail = rate
                break
    else:
        fail = rate
        while rate // 2 >= settings.ol_min and not out_of_time():
            rate //= 2
            if await trial(rate):
                best = rate
                break
            fail = rate
    if best is not None and fail is not None:
        lo, hi = best, fail
        for _ in range(settings.ol_bisect):
            if out_of_time() or hi - lo <= max(2, lo // 20):
                break
            mid = (lo + hi) // 2
            if await trial(mid):
                lo = mid
            else:
                hi = mid
        best = lo
    # a failing step where this client itself fell behind its schedule by more than half
    # the latency limit says more about the client (sharing core 1 with the mock) than the arm
    above = [st for st in steps if not st["pass"] and (best is None or st["rate"] > best)]
    lowest_fail = min(above, key=lambda st: st["rate"], default=None)
    client_limited = bool(lowest_fail and lowest_fail["client_lag_max_ms"] > settings.ol_p99_ms / 2)
    return {"max_rate": best, "first_fail": fail, "capped": fail is None and best is not None,
            "client_limited": client_limited,
            "p99_limit_ms": settings.ol_p99_ms, "step_seconds": settings.ol_step_seconds, "steps": steps}


# ---------------------------------------------------------------- 3. streaming


async def tollhouse_usage(gw: Gateway) -> dict:
    status, doc = await get_json(gw.port, "/admin/usage", {"authorization": f"Bearer {gw.admin_token}"})
    if status != 200:
        return {"_error": f"/admin/usage answered {status}: {str(doc)[:200]}"}
    row = ((doc.get("by") or {}).get("provider") or {}).get("mock") or {}
    return {"requests": row.get("requests", 0), "input": row.get("input", 0) + row.get("cached_input", 0),
            "output": row.get("output", 0) + row.get("reasoning", 0)}


async def tollhouse_record(gw: Gateway, request_id: str) -> dict:
    """The ledger's charge for one request, from /admin/usage/records."""
    status, doc = await get_json(gw.port, f"/admin/usage/records?request_id={request_id}",
                                 {"authorization": f"Bearer {gw.admin_token}"})
    if status != 200:
        return {"_error": f"/admin/usage/records answered {status}: {str(doc)[:200]}"}
    rows = doc.get("records") or []
    charge = next((r for r in rows if r.get("kind") == "charge"), None)
    if charge is None:
        return {"_error": f"no charge recorded for {request_id} (kinds: {[r.get('kind') for r in rows]})"}
    return {"input": (charge.get("input") or 0) + (charge.get("cached_input") or 0),
            "output": (charge.get("output") or 0) + (charge.get("reasoning") or 0),
            "reason": charge.get("reason"), "provenance": charge.get("provenance"),
            "kinds": [r.get("kind") for r in rows]}


async def streaming(arm: Arm, settings: Settings, mock_port: int, gw: Gateway | None) -> dict:
    events, pace = settings.s3_events, settings.s3_pace_ms
    raw = arm.request(f"events={events},pace_ms={pace:g}", stream=True, include_usage=True)
    expected = mock.expected_stream(events, True)
    check_usage = gw is not None and gw.name == "tollhouse"
    await trio.sleep(0.5)  # requests cut off by the previous load (wrk's last ones) settle first
    before = await tollhouse_usage(gw) if check_usage else None
    m_before = await mock_stats(mock_port)
    ttft, gaps, durations, request_ids = [], [], [], []
    n_ok = n_bytes = n_usage = 0
    problems = []
    for _ in range(settings.s3_streams):
        rec = await client.one_stream(arm.port, raw, timeout=events * pace / 1000 + 30)
        request_ids.append(client.header(rec, b"x-request-id"))
        a = client.analyse_stream(rec)
        ok = (a["status"] == 200 and a["error"] is None and a["terminal"]
              and a["text"] == mock.expected_text(events) and a["events"] == events)
        n_ok += ok
        if not ok and len(problems) < 3:
            problems.append({k: a[k] for k in ("status", "error", "terminal", "events", "stream_errors")})
        if arm.protocol == "openai":
            n_bytes += client.body_bytes(rec) == expected
        u = a["usage"] or {}
        got = (u.get("prompt_tokens", u.get("input_tokens")), u.get("completion_tokens", u.get("output_tokens")))
        n_usage += got == (mock.PROMPT_TOKENS, events)
        if a["ttft"] is not None:
            ttft.append(a["ttft"])
        gaps.extend(a["gaps"])
        if a["duration"] is not None:
            durations.append(a["duration"])
    m_after = await mock_stats(mock_port)
    out = {
        "streams": settings.s3_streams, "events": events, "pace_ms": pace,
        "complete": n_ok, "bytes_identical": n_bytes if arm.protocol == "openai" else None,
        "client_usage_ok": n_usage, "problems": problems,
        "ttft": lat_summary(ttft), "gap": lat_summary(gaps),
        "duration": lat_summary(durations),
        "_ttft": ttft, "_gaps": gaps,
    }
    mock_delta = {"input": m_after["prompt_tokens"] - m_before["prompt_tokens"],
                  "output": m_after["completion_tokens"] - m_before["completion_tokens"],
                  "reports": m_after["usage_reports"] - m_before["usage_reports"]}
    out["mock_usage"] = mock_delta
    if check_usage:
        # per request: the ledger's charge equals what the mock reported for that stream
        records = [await tollhouse_record(gw, rid) if rid else {"_error": "no x-request-id header"}
                   for rid in request_ids]
        per_request_ok = sum(1 for r in records if r.get("input") == mock.PROMPT_TOKENS
                             and r.get("output") == events and r.get("reason") == "end")
        after = await tollhouse_usage(gw)
        err = next((x["_error"] for x in [before, after, *records] if "_error" in x), None)
        delta = None if "_error" in before or "_error" in after else {
            k: after[k] - before[k] for k in ("requests", "input", "output")}
        totals_ok = delta is not None and delta["input"] == mock_delta["input"] and \
            delta["output"] == mock_delta["output"]
        out["usage_check"] = {"ok": per_request_ok == len(request_ids) and totals_ok,
                              "per_request_ok": per_request_ok, "streams": len(request_ids),
                              "ledger_delta": delta, "mock_delta": mock_delta, "error": err,
                              "sample_record": records[0] if records else None}
    return out


# ---------------------------------------------------------------- 4. sustained streams


async def sustained_level(arm: Arm, n: int, settings: Settings) -> dict:
    events, pace = settings.s4_events, settings.s4_pace_ms
    raw = arm.request(f"events={events},pace_ms={pace:g}", stream=True, include_usage=False)
    recs = [StreamRecord() for _ in range(n)]
    timeout = events * pace / 1000 + settings.s4_ramp_s + 30
    async with trio.open_nursery() as nursery:
        for rec in recs:
            nursery.start_soon(client.one_stream, arm.port, raw, timeout, None, rec)
            await trio.sleep(settings.s4_ramp_s / n)
    expected = mock.expected_text(events)
    limit = 10 * pace / 1000
    failed = {"status": 0, "incomplete": 0, "gap": 0}
    ttft, max_gaps, all_gaps = [], [], []
    first_problem = None
    for rec in recs:
        a = client.analyse_stream(rec)
        if a["ttft"] is not None:
            ttft.append(a["ttft"])
        mg = max(a["gaps"]) if a["gaps"] else None
        if mg is not None:
            max_gaps.append(mg)
        all_gaps.extend(a["gaps"])
        problem = None
        if a["status"] != 200 or a["error"]:
            failed["status"] += 1
            problem = f"status {a['status']} error {a['error']}"
        elif a["text"] != expected or not a["terminal"]:
            failed["incomplete"] += 1
            problem = f"{a['events']}/{events} events, terminal={a['terminal']}"
        elif mg is not None and mg > limit:
            failed["gap"] += 1
            problem = f"gap {mg * 1000:.0f} ms"
        if problem and first_problem is None:
            first_problem = problem
    ok = not any(failed.values())
    return {"streams": n, "pass": ok, "failed": failed, "first_problem": first_problem,
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "gap_p50_ms": ms(percentile(all_gaps, 50)), "gap_p99_ms": ms(percentile(all_gaps, 99)),
            "max_gap_ms": ms(max(max_gaps)) if max_gaps else None}


async def sustained(arm: Arm, settings: Settings, deadline: float) -> dict:
    levels = []
    best = None
    queue = list(settings.s4_levels)
    below = [n for n in (25, 10) if n < settings.s4_levels[0]]
    # unmeasured: the first level at a third of the length, so a JIT or a lazily grown
    # pool is warm before anything counts
    await sustained_level(arm, settings.s4_levels[0], attrs.evolve(settings, s4_events=max(10, settings.s4_events // 3)))
    await trio.sleep(1.0)
    while queue:
        n = queue.pop(0)
        if time.monotonic() + settings.s4_events * settings.s4_pace_ms / 1000 + 20 > deadline:
            levels.append({"streams": n, "skipped": "time budget"})
            break
        r = await sustained_level(arm, n, settings)
        await trio.sleep(1.0)
        if not r["pass"]:
            # one retry: a level fails only when it fails twice in a row
            again = await sustained_level(arm, n, settings)
            await trio.sleep(1.0)
            again["first_attempt"] = r
            r = again
            r["retried"] = True
        levels.append(r)
        if r["pass"]:
            best = n
            if n < settings.s4_levels[0]:
                break  # found the level below the first that passes
        elif best is None and below:
            queue = [below.pop(0)]  # the first level failed: look lower, a bounded few steps
        else:
            break
    top = settings.s4_levels[-1]
    return {"max_streams": best, "at_top_level": best == top,
            "levels_tried": [lv["streams"] for lv in levels if "pass" in lv],
            "events": settings.s4_events, "pace_ms": settings.s4_pace_ms, "gap_limit_ms": 10 * settings.s4_pace_ms,
            "levels": levels}


# ---------------------------------------------------------------- 5. memory


async def _hold(arm: Arm, n: int, settings: Settings, mock_port: int, measure) -> dict:
    """Open ``n`` streams the mock holds, ramping gradually; call ``measure`` once they
    are all open (or the open deadline passes), then release them and wait them out."""
    group = "g" + secrets.token_hex(6)
    raw = arm.request(f"events=100000,pace_ms={settings.s5_pace_ms:g},hold={group}", stream=True,
                      include_usage=False)
    recs = [StreamRecord() for _ in range(n)]
    firsts = [trio.Event() for _ in range(n)]
    info: dict = {}
    open_timeout = settings.s5_open_timeout_s
    hold_timeout = open_timeout + 120

    def opened() -> int:
        return sum(1 for r in recs if r.pieces and r.error is None)

    running = [0]

    async def one(i: int) -> None:
        running[0] += 1
        try:
            await client.one_stream(arm.port, raw, hold_timeout, firsts[i], recs[i])
        finally:
            running[0] -= 1

    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()

        async def ramp():
            for i in range(n):
                if time.monotonic() - t0 > open_timeout:
                    break
                nursery.start_soon(one, i)
                await trio.sleep(1.0 / settings.s5_ramp_per_s)

        nursery.start_soon(ramp)
        with trio.move_on_after(open_timeout):
            while opened() < n:
                await trio.sleep(0.05)
        info["open_s"] = round(time.monotonic() - t0, 2)
        await trio.sleep(0.5)
        info["opened"] = opened()
        info.update(await measure(info["opened"]))
        nursery.cancel_scope.deadline = trio.current_time() + 30
        # streams still queued inside a slow gateway reach the mock after the release:
        # release again until every stream has ended
        while running[0]:
            await mock_release(mock_port, group)
            await trio.sleep(0.5)
    info["errors"] = sum(1 for r in recs if r.error is not None and r.error != "timeout")
    info["first_error"] = next((r.error for r in recs if r.error), None)
    return info


async def memory(arm: Arm, gw: Gateway, settings: Settings, mock_port: int, deadline: float) -> dict:
    """Restart the gateway so its idle RSS is a fresh process's (the rounds and the
    sustained streams have grown its heap, and allocators seldom give memory back),
    then for each level: ramp to N streams, release them, ramp to N again, and charge
    the RSS growth over the fresh idle to the N streams open the second time."""
    await trio.to_thread.run_sync(gw.restart)
    await probe(arm)
    if not arm.ok:
        return {"error": f"after restart: {arm.reason}"}
    await warmup(arm, attrs.evolve(settings, warmup_requests=min(100, settings.warmup_requests)))
    await trio.sleep(1.0)
    proc = gw.proc
    idle = proc.rss_kb() or 0
    out: dict = {"idle_kb": idle, "levels": [], "method": "fresh process; second ramp to N"}
    peak = idle

    async def sample(_opened: int) -> dict:
        vals = []
        for _ in range(3):
            vals.append(proc.rss_kb() or 0)
            await trio.sleep(0.2)
        return {"rss_kb": max(vals)}

    for n in settings.s5_levels:
        if time.monotonic() + 2 * (n / settings.s5_ramp_per_s + 10) > deadline:
            out["levels"].append({"streams": n, "skipped": "time budget"})
            continue
        first = await _hold(arm, n, settings, mock_port, sample)  # the same count first, to warm pools
        await trio.sleep(1.0)
        released = proc.rss_kb() or 0
        held = await _hold(arm, n, settings, mock_port, sample)
        peak = max(peak, first["rss_kb"], held["rss_kb"])
        opened = held["opened"]
        per = (held["rss_kb"] - idle) / opened if opened else None
        per_first = (first["rss_kb"] - idle) / first["opened"] if first["opened"] else None
        out["levels"].append({"streams": n, "opened": opened, "first_opened": first["opened"],
                              "open_s": held["open_s"], "idle_kb": idle, "open_kb": held["rss_kb"],
                              "first_open_kb": first["rss_kb"], "after_release_kb": released,
                              "per_stream_kb": None if per is None else round(per, 2),
                              "first_ramp_per_stream_kb": None if per_first is None else round(per_first, 2),
                              "errors": held["errors"], "first_error": held["first_error"]})
        await trio.sleep(1.0)
    out["peak_kb"] = peak
    return out
