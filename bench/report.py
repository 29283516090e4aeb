"""The Markdown table, the plot (through bench/plot.py) and the profile summary."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.arms import TOOLS

PLOT = Path(__file__).resolve().parent / "plot.py"


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    a = abs(x)
    s = f"{x:.3f}" if a < 1 else f"{x:.2f}" if a < 10 else f"{x:.1f}" if a < 100 else f"{x:,.0f}"
    return s + unit


def pair(a, b, sep=" / ") -> str:
    if a is None and b is None:
        return "—"
    return f"{fmt(a)}{sep}{fmt(b)}"


def col_name(name: str) -> str:
    return name.replace(":anthropic", " A→O")


def _g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def markdown(doc: dict, png: str | None, plot_note: str | None = None) -> str:
    arms = doc["arms"]
    names = list(arms)
    ok = {n: arms[n]["status"] == "ok" for n in names}

    def row(label: str, cell) -> str:
        cells = []
        for n in names:
            if not ok[n]:
                cells.append("")
                continue
            try:
                cells.append(cell(n, arms[n]))
            except (KeyError, TypeError):
                cells.append("—")
        return f"| {label} | " + " | ".join(cells) + " |"

    def status_cell(n):
        a = arms[n]
        if a["status"] == "ok":
            return "ok" if a["streaming"] else "ok (no streaming)"
        return f"**{a['status']}**"

    def sustained(n, a):
        s = a.get("sustained")
        if not s:
            return "—"
        tried = [lv for lv in s["levels"] if "pass" in lv]
        if not tried:
            return "—"
        best = s.get("max_streams")
        fail = min((lv for lv in tried if not lv["pass"]), key=lambda lv: lv["streams"], default=None)
        if best is None:
            return f"< {min(lv['streams'] for lv in tried)} ({tried[0]['first_problem']})"
        txt = f"≥ {best}" if s.get("at_top_level") else f"{best}"
        ttft = next((lv.get("ttft_p99_ms") for lv in tried if lv["streams"] == best), None)
        if ttft is not None:
            txt += f", TTFT p99 {fmt(ttft)}"
        if fail is not None:
            txt += f" ({fail['streams']}: {fail['first_problem']})"
        return txt

    def mem(n, a):
        m = a.get("memory")
        if not m:
            return "—"
        if "idle_kb" not in m:
            return m.get("error", "—")
        return pair(m["idle_kb"] / 1024, (m.get("peak_kb") or 0) / 1024)

    def per_stream(n, a):
        m = a.get("memory")
        if not m:
            return "—"
        parts = []
        for lv in m["levels"]:
            if "skipped" in lv:
                parts.append("skipped")
                continue
            v = fmt(lv.get("per_stream_kb"))
            if lv["opened"] < lv["streams"]:
                v += f" ({lv['opened']} open)"
            parts.append(v)
        return " / ".join(parts)

    def open_loop(n, a):
        o = a.get("open_loop")
        if not o:
            return "—"
        if o.get("max_rate") is None:
            return f"< {min(s['rate'] for s in o['steps'])}" if o.get("steps") else "—"
        txt = ("≥ " if o.get("capped") or o.get("client_limited") else "") + f"{o['max_rate']:,}"
        return txt + (" (client-bound)" if o.get("client_limited") else "")

    def wrk_cell(n, a):
        t = a.get("throughput_c10")
        if not t:
            return "—"
        if "rps" not in t:
            return "error"
        s = f"{fmt(t['rps'])} ({fmt(t['p99_ms'])})"
        return s + (f" {t['errors']} err" if t.get("errors") else "")

    def stream_check(n, a):
        s = a.get("streaming")
        if not s:
            return "—"
        txt = f"{s['complete']}/{s['streams']}"
        if s.get("bytes_identical") is not None:
            txt += f", bytes {s['bytes_identical']}/{s['streams']}"
        return txt

    def usage_cell(n, a):
        s = a.get("streaming")
        if not s:
            return "—"
        txt = f"client {s['client_usage_ok']}/{s['streams']}"
        if "usage_check" in s:
            txt += ", ledger " + ("= mock" if s["usage_check"]["ok"] else "**≠ mock**")
        return txt

    st = doc["settings"]
    lines = [
        f"# Tollhouse bench — {doc['mode']} run, {doc['started_at']}",
        "",
        f"`{doc['command']}` — {doc['duration_s']:.0f} s; git {doc['git']['sha'][:10]}"
        f"{' (dirty working tree)' if doc['git']['dirty'] else ''}; {doc['machine']['cores']} cores "
        f"({doc['machine']['cpu']}), {pinning_text(doc['machine'].get('pinning'))}; {st['rounds']} interleaved "
        "round(s). Times in ms; *added* = arm minus direct to the mock, same run. A→O = Anthropic Messages "
        "client → OpenAI upstream (translated).",
        "",
        "| | " + " | ".join(col_name(n) for n in names) + " |",
        "|---|" + "|".join("--:" for _ in names) + "|",
        "| status | " + " | ".join(status_cell(n) for n in names) + " |",
        row("latency c=1 p50 / p99", lambda n, a: pair(a["latency_c1"]["p50_ms"], a["latency_c1"]["p99_ms"])),
        row("**added latency c=1 p50 / p99**", lambda n, a: "—" if n == "direct" else pair(
            a["latency_c1"]["added_p50_ms"], a["latency_c1"]["added_p99_ms"])),
        row(f"req/s at c={st['wrk_connections']}, wrk (p99)", wrk_cell),
        row(f"open-loop req/s, p99 < {st['ol_p99_ms']:g} ms, 0 errors", open_loop),
        row(f"TTFT p50 / p99 ({st['s3_events']} ev × {st['s3_pace_ms']:g} ms)",
            lambda n, a: pair(a["streaming"]["ttft"]["p50_ms"], a["streaming"]["ttft"]["p99_ms"])),
        row("**added TTFT p50 / p99**", lambda n, a: "—" if n == "direct" else pair(
            a["streaming"]["added_ttft_p50_ms"], a["streaming"]["added_ttft_p99_ms"])),
        row("event gap p50 / p99 / max", lambda n, a: f"{pair(a['streaming']['gap']['p50_ms'], a['streaming']['gap']['p99_ms'])}"
            f" / {fmt(a['streaming']['gap']['max_ms'])}"),
        row("**added gap p50 / p99**", lambda n, a: "—" if n == "direct" else pair(
            a["streaming"]["added_gap_p50_ms"], a["streaming"]["added_gap_p99_ms"])),
        row("streams complete, bytes identical", stream_check),
        row("usage right (client; Tollhouse ledger)", usage_cell),
        row(f"streams sustained at {st['s4_pace_ms']:g} ms (no gap > {10 * st['s4_pace_ms']:g} ms)", sustained),
        row("memory idle / peak (MB)", mem),
        row("memory per open stream at " + " / ".join(str(x) for x in st["s5_levels"]) + " (KB)", per_stream),
        row("other processes' CPU while measured (cores, mean / max)", lambda n, a: (
            ("⚠ " if a["background_cpu"]["foreign_cores_mean"] > 0.1 else "")
            + pair(a["background_cpu"]["foreign_cores_mean"], a["background_cpu"]["foreign_cores_max"]))
            if a.get("background_cpu") else "—"),
        "",
    ]
    bg = doc.get("background_cpu") or {}
    if (bg.get("foreign_cores_mean") or 0) > 0.1 or (bg.get("before_run_cores") or 0) > 0.2:
        lines += [f"⚠ **Other processes used {fmt(bg.get('foreign_cores_mean'))} cores on average during this run "
                  f"(max {fmt(bg.get('foreign_cores_max'))}; {fmt(bg.get('before_run_cores'))} before it started)**: "
                  "the figures are skewed by work the bench does not control. Re-run on a quiet machine.", ""]
    r = doc.get("ratios") or {}
    lines += ["**Ratios (same run)**", ""]
    labels = {
        "added_latency_p50_tollhouse_over_nginx": "Tollhouse added latency / nginx added latency, p50",
        "added_latency_p99_tollhouse_over_nginx": "Tollhouse added latency / nginx added latency, p99",
        "throughput_c10_tollhouse_over_litellm": "Tollhouse req/s / LiteLLM req/s (wrk c=10)",
        "throughput_c10_tollhouse_over_portkey": "Tollhouse req/s / Portkey req/s (wrk c=10)",
        "open_loop_tollhouse_over_litellm": "Tollhouse / LiteLLM, open-loop max rate",
        "open_loop_tollhouse_over_portkey": "Tollhouse / Portkey, open-loop max rate",
        "added_latency_p50_tollhouse_over_litellm": "Tollhouse added latency / LiteLLM added latency, p50",
        "added_latency_p50_tollhouse_over_portkey": "Tollhouse added latency / Portkey added latency, p50",
        "throughput_c10_tollhouse_anthropic_over_litellm_anthropic": "Tollhouse A→O req/s / LiteLLM A→O req/s",
        "throughput_c10_tollhouse_anthropic_over_portkey_anthropic": "Tollhouse A→O req/s / Portkey A→O req/s",
        "throughput_c10_tollhouse_over_nginx": "Tollhouse req/s / nginx req/s (wrk c=10)",
        "throughput_c10_tollhouse_over_bare": "Tollhouse req/s / bare-ASGI req/s (hypercorn + pool alone, wrk c=10)",
        "throughput_c10_bare_over_portkey": "bare-ASGI req/s / Portkey req/s (wrk c=10)",
        "open_loop_bare_over_portkey": "bare-ASGI / Portkey, open-loop max rate",
        "throughput_c10_shared_over_local": "Shared backend req/s / local backend req/s, one worker (wrk c=10)",
        "throughput_c10_shared_2w_over_1w": "Shared backend, two workers (both cores) / one worker, req/s (wrk c=10)",
        "open_loop_shared_2w_over_1w": "Shared backend, two workers / one worker, open-loop max rate",
    }
    for key, label in labels.items():
        v = r.get(key)
        lines.append(f"- {label}: {'n/a' if v is None else f'{v:g}×'}")
    for key, label in (("added_latency_p50_shared_minus_local_ms", "Shared backend's added latency over the local's, p50"),
                       ("added_latency_p99_shared_minus_local_ms", "Shared backend's added latency over the local's, p99"),
                       ("added_latency_p50_tollhouse_minus_bare_ms", "Tollhouse's added latency over bare-ASGI's, p50"),
                       ("added_ttft_p50_tollhouse_minus_bare_ms", "Tollhouse's added TTFT over bare-ASGI's, p50")):
        v = r.get(key)
        lines.append(f"- {label}: {'n/a' if v is None else f'{v:+.3g} ms'}")
    ab = doc.get("ab")
    if ab:
        lines += ["", f"**A/B: tollhouse-b ({ab['b']}) over tollhouse ({ab['a']}), same run** — pooled, and the "
                      "median of the per-round ratios (each round measures both within seconds)", ""]
        for key, v in ab["ratios"].items():
            lines.append(f"- {key}: {'n/a' if v is None else f'{v:g}×'}")
    lines.append("")
    missing = [(n, a) for n, a in arms.items() if a["status"] != "ok"]
    partial = [(n, a) for n, a in arms.items() if a["status"] == "ok" and a.get("reason")]
    not_attempted = doc.get("peers_not_attempted") or {}
    if missing or partial or not_attempted:
        lines += ["**Arms that did not run (or ran in part)**", ""]
        for n, a in missing + partial:
            reason = (a.get("reason") or "").strip().splitlines()
            lines.append(f"- {col_name(n)}: {a['status']} — {reason[0] if reason else ''}")
        for name, why in not_attempted.items():
            lines.append(f"- {name}: not attempted — {why}")
        lines.append("")
    ceiling = _g(arms, "direct", "open_loop", "max_rate")
    if ceiling:
        lines += [f"Instrument ceilings: direct-to-mock reaches {fmt(_g(arms, 'direct', 'throughput_c10', 'rps'))} "
                  f"req/s under wrk and {ceiling:,} req/s open-loop (the Python client and the mock share core 1); "
                  "an arm at or near these figures is limited by the bench, not by itself.", ""]
    prof = doc.get("profile")
    if prof and prof.get("by_package"):
        lines += [f"**Profile of Tollhouse under wrk c={st['wrk_connections']}** (py-spy, {prof['samples']} samples; "
                  "share of samples)", "",
                  "By thread: " + ", ".join(f"{k} {v:.0%}" for k, v in prof.get("by_thread", [])[:4]), "",
                  "By package (self time): " + ", ".join(f"{k} {v:.0%}" for k, v in prof["by_package"][:10]), "",
                  "Top functions (self): " + "; ".join(f"`{k}` {v:.1%}" for k, v in prof["top_self"][:12]), "",
                  "Hottest leaf frames with their callers:", "",
                  *[f"- {v:.1%} `{k}`" for k, v in prof.get("top_self_chains", [])[:8]], "",
                  *([("GIL held (py-spy --gil, " + str(prof["gil"]["samples"]) + " samples) by package: "
                      + ", ".join(f"{k} {v:.0%}" for k, v in prof["gil"]["by_package"][:10])
                      + "; top: " + "; ".join(f"`{k}` {v:.1%}" for k, v in prof["gil"]["top_self"][:8])), ""]
                    if prof.get("gil", {}).get("samples") else []),
                  "Top functions (inclusive, below the server loop): " + "; ".join(f"`{k}` {v:.0%}" for k, v in prof["top_inclusive"][:12]),
                  ""]
    if doc.get("transport"):
        lines += transport_lines(doc["transport"])
    v = doc["versions"]
    lines += ["Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    for note in doc.get("notes") or ():
        lines.append(f"- note: {note}")
    if png:
        lines += ["", f"![bench plot]({png})"]
    elif plot_note:
        lines += ["", f"(no plot: {plot_note})"]
    return "\n".join(lines) + "\n"


def pinning_text(pinning) -> str:
    """What the run's pinning was, as checked from /proc while it ran."""
    if not isinstance(pinning, dict):
        return f"**not pinned** ({pinning or 'unknown'})"
    text = f"gateway on core {pinning['gateway_core']}, mock + wrk + load client on core {pinning['load_core']}"
    if pinning.get("checked"):
        return text + " (checked in /proc)"
    return text + " — **pinning check failed: " + "; ".join(pinning.get("mismatches") or ["?"]) + "**"


def only_markdown(doc: dict) -> str:
    """A run of one scenario (``--only``): its table, the machine, the notes."""
    lines = [f"# Tollhouse bench: {doc['command']}", "",
             f"{doc['started_at']}, {doc['duration_s']:g} s, git {doc['git']['sha'][:10]}"
             f"{' (dirty)' if doc['git']['dirty'] else ''}, {doc['machine']['cpu']} × {doc['machine']['cores']}", ""]
    bg = doc.get("background_cpu") or {}
    if (bg.get("foreign_cores_mean") or 0) > 0.1:
        lines += [f"⚠ **Other processes used {fmt(bg.get('foreign_cores_mean'))} cores on average during this run**"
                  " -- the figures are skewed.", ""]
    if doc.get("transport"):
        lines += transport_lines(doc["transport"])
    v = {**doc["versions"], **(doc.get("transport") or {}).get("versions", {})}
    lines += ["Versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)), ""]
    lines += [f"- note: {note}" for note in doc.get("notes") or ()]
    return "\n".join(lines) + "\n"


def transport_lines(t: dict) -> list[str]:
    """The transport scenario: the gateway's pool against httpx2 on the mock."""
    names = list(t["clients"])
    cells = {n: t["clients"][n] for n in names}

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(cells[n]) for n in names) + " |"

    lines = [f"**Transport: upstream clients against the mock** ({t['rounds']} rounds × {t['seconds']:g} s, "
             f"each client alone on core {t.get('client_core', '—')}; baseline: raw socket client, "
             f"p50 {fmt(t['baseline_c1'].get('p50_ms'), ' ms')})", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             row("whole responses/s at c=10 (median)", lambda c: fmt(c.get("rps_c10"))),
             row("rounds", lambda c: ", ".join(fmt(x) for x in c.get("rps_c10_rounds", []))),
             row("added p50 at c=1", lambda c: fmt(c.get("added_p50_ms"), " ms")),
             row("p50 / p99 at c=1", lambda c: pair(c["latency_c1"].get("p50_ms"), c["latency_c1"].get("p99_ms"))),
             row("errors", lambda c: str(c.get("errors", 0)) + ("; " + c["problems"][0][:80] if c.get("problems") else "")),
             "", f"- pool / httpx2 at c=10: {fmt(t.get('rps_c10_pool_over_httpx2'))}×", ""]
    return lines


def plot(json_path: Path, png: Path) -> str | None:
    """Draw with matplotlib from this interpreter, or from the bench tools venv."""
    candidates = [sys.executable, str(TOOLS / "tools-venv" / "bin" / "python")]
    last = "matplotlib not found (bench/setup.sh installs it in the tools venv)"
    for py in candidates:
        if not Path(py).exists():
            continue
        probe = subprocess.run([py, "-c", "import matplotlib"], capture_output=True)
        if probe.returncode != 0:
            continue
        p = subprocess.run([py, str(PLOT), str(json_path), str(png)], capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            return None
        last = p.stderr.strip()[-300:]
    return last


_LINE = re.compile(r":\d+\)$")


_META = ("thread (", "process ")


def _package(frame: str) -> str:
    """py-spy names a frame ``func (pkg/module.py:line)``: the first path part is the package."""
    m = re.search(r"\(([^()]*?)(?::\d+)?\)$", frame)
    path = m.group(1) if m else ""
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    head = path.split("/", 1)[0] if "/" in path else ""
    if head in ("gateway", "actors", "providers", "protocols"):
        return f"tollhouse:{head}"
    if head:
        return head
    return "stdlib:" + path.removesuffix(".py") if path else "?"


def summarise_profile(collapsed: str) -> dict:
    """Self and inclusive shares per function and per package, from py-spy's raw
    (collapsed stacks) output: ``frame;frame;... count`` per line."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    pkg: Counter = Counter()
    threads: Counter = Counter()
    chains: Counter = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if f]
        thread = next((f for f in raw if f.startswith("thread (")), None)
        raw = [f for f in raw if not f.startswith(_META)]
        if not raw:
            continue
        frames = [_LINE.sub(")", f) for f in raw]
        total += n
        # the event loop thread runs the server; any other thread is a worker (SQLite writer, ...)
        threads["event loop" if any(f.startswith("unrolled_run ") for f in frames) else
                (thread or "other thread")] += n
        self_c[frames[-1]] += n
        chains[" ← ".join(reversed(frames[-3:]))] += n
        pkg[_package(raw[-1])] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return {"samples": 0}

    def top(c: Counter, k: int):
        return [(name, round(v / total, 4)) for name, v in c.most_common(k)]

    below_root = Counter({k: v for k, v in incl.items() if v / total < 0.85})
    return {"samples": total, "top_self": top(self_c, 25), "top_inclusive": top(below_root, 40),
            "by_package": top(pkg, 20), "by_thread": top(threads, 10), "top_self_chains": top(chains, 15)}


def main(argv: list[str] | None = None) -> int:
    """Re-render a result: ``python -m bench.report bench/results/latest.json`` (writes .md and .png beside it)."""
    import json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULT.json", file=sys.stderr)
        return 2
    src = Path(args[0])
    doc = json.loads(src.read_text())
    png = src.with_suffix(".png")
    note = plot(src, png)
    src.with_suffix(".md").write_text(markdown(doc, png.name if png.exists() else None, note))
    print(f"wrote {src.with_suffix('.md')}" + (f" and {png}" if png.exists() else f" (no plot: {note})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
