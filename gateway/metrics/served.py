"""The metrics of served requests, counted from each ``Served`` record.

An ``Observer`` (``gateway.observe``): it hears every LLM call, WebSocket turn and
refusal once, after its settlement, and only adds to counters and histograms, so it
is quick on the event loop. Tokens and cost are the settlement's own numbers (the
usage the ledger booked, bounded as the ledger bounds it), so a scrape's totals agree
with the ledger's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from actors.usage_bounds import clean_usage
from gateway.metrics.labels import Labels, key
from gateway.observe import Served

BUCKETS = ("input", "cached_input", "cache_write", "output", "reasoning")  # ``Usage``'s fields
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Children:
    """A metric's labelled children by their label values, looked up once each:
    prometheus-client's ``labels()`` validates and locks on every call, which was a
    third of the time an observation took. Bounded as the label values are."""

    def __init__(self, metric) -> None:
        self.metric = metric
        self.cache: dict[tuple, object] = {}

    def __call__(self, *values: str):
        child = self.cache.get(values)
        if child is None:
            child = self.cache[values] = self.metric.labels(*values)
        return child


class ServedMetrics:
    def __init__(self, registry: CollectorRegistry, labels: Labels) -> None:
        self.labels = labels
        self.requests = Children(Counter(
            "tollhouse_requests", "LLM calls and WebSocket turns answered or refused, by what the client got",
            ("protocol", "transport", "model", "target", "status"), registry=registry))
        self.charges = Children(Counter(
            "tollhouse_charges", "Settlements booked on the ledger (one per reserved request), by end reason",
            ("key", "model", "target", "reason", "provenance"), registry=registry))
        self.tokens = Children(Counter(
            "tollhouse_tokens", "Tokens charged, by bucket (disjoint: input excludes cache reads and writes)",
            ("key", "model", "target", "bucket"), registry=registry))
        self.cost = Children(Counter(
            "tollhouse_cost_usd", "USD charged (over-runs included)", ("key", "model", "target"), registry=registry))
        self.duration = Children(Histogram(
            "tollhouse_request_duration_seconds", "From the request's arrival to its settlement",
            ("protocol", "model", "stream"), buckets=DURATION_BUCKETS, registry=registry))
        self.ttfb = Children(Histogram(
            "tollhouse_time_to_first_byte_seconds", "From the request's arrival to the answer's first byte",
            ("protocol", "model", "stream"), buckets=TTFB_BUCKETS, registry=registry))
        self.failovers = Children(Counter(
            "tollhouse_failovers", "Upstream attempts after a request's first (another credential or target)",
            ("model",), registry=registry))

    def served(self, record: Served) -> None:
        labels = self.labels
        model, target = labels.model(record.model), labels.target(record.target)
        self.requests(record.protocol, record.transport.value, model, target, str(record.status)).inc()
        stream = "true" if record.stream else "false"
        self.duration(record.protocol, model, stream).observe(record.duration_s)
        if record.ttfb_s is not None:
            self.ttfb(record.protocol, model, stream).observe(record.ttfb_s)
        if record.attempts > 1:
            self.failovers(model).inc(record.attempts - 1)
        if record.reason is None:
            return  # nothing was reserved: nothing is on the ledger
        key_name = key(record.key_name)
        self.charges(key_name, model, target, record.reason, record.provenance).inc()
        if record.usage is not None:
            usage = clean_usage(record.usage)
            for bucket in BUCKETS:
                count = getattr(usage, bucket)
                if count:
                    self.tokens(key_name, model, target, bucket).inc(count)
        if record.cost_micro:
            self.cost(key_name, model, target).inc(record.cost_micro / 1_000_000)
