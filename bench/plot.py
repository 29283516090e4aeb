"""Draw a bench result as one PNG: ``python bench/plot.py result.json out.png``.

Standalone (json + matplotlib only) so it can run from the bench tools venv, keeping
matplotlib out of the project's own environment.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def g(d, *path):
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def bars(ax, names, series, title, ylabel, log=False):
    width = 0.8 / max(1, len(series))
    xs = range(len(names))
    for i, (label, values) in enumerate(series):
        floor = 0.01
        vals = [float("nan") if v is None else (max(v, floor) if log else v) for v in values]
        pos = [x + (i - (len(series) - 1) / 2) * width for x in xs]
        rects = ax.bar(pos, vals, width, label=label)
        for r, v in zip(rects, values):
            if v is None:
                continue
            else:
                txt = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
                ax.annotate(txt, (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                            fontsize=6)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([n.replace(":anthropic", "\nA→O") for n in names], fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.tick_params(axis="y", labelsize=7)
    if len(series) > 1:
        ax.legend(fontsize=7)


def main(src: str, dst: str) -> None:
    doc = json.load(open(src))
    arms = {n: a for n, a in doc["arms"].items() if a["status"] == "ok"}
    gw = [n for n in arms if n != "direct"]
    allv = list(arms)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    bars(axes[0][0], gw, [
        ("p50", [g(arms[n], "latency_c1", "added_p50_ms") for n in gw]),
        ("p99", [g(arms[n], "latency_c1", "added_p99_ms") for n in gw]),
    ], "Added latency, non-streaming, c=1 (ms, log)", "ms", log=True)
    bars(axes[0][1], allv, [
        ("wrk c=10 req/s", [g(arms[n], "throughput_c10", "rps") for n in allv]),
        ("open-loop max req/s (p99<50ms)", [g(arms[n], "open_loop", "max_rate") for n in allv]),
    ], "Throughput (req/s, log)", "req/s", log=True)
    bars(axes[1][0], gw, [
        ("added TTFT p50", [g(arms[n], "streaming", "added_ttft_p50_ms") for n in gw]),
        ("added gap p99", [g(arms[n], "streaming", "added_gap_p99_ms") for n in gw]),
    ], "Streaming, 64 events x 20 ms (ms)", "ms")
    levels = doc["settings"]["s5_levels"]
    mem_series = []
    for lv in levels:
        vals = []
        for n in gw:
            found = [x for x in (g(arms[n], "memory", "levels") or []) if x.get("streams") == lv]
            vals.append(found[0].get("per_stream_kb") if found else None)
        mem_series.append((f"KB per stream at {lv}", vals))
    mem_series.append(("idle RSS (MB)", [((g(arms[n], "memory", "idle_kb") or 0) / 1024) or None for n in gw]))
    bars(axes[1][1], gw, mem_series, "Memory (log)", "KB / MB", log=True)
    fig.suptitle(f"Tollhouse bench ({doc['mode']}, {doc['started_at']}, git {doc['git']['sha'][:10]}"
                 f"{', dirty' if doc['git']['dirty'] else ''})", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
