"""Gauges of what exists at scrape time, asked of the actors and the runtime.

Nothing here is counted along the way: each scrape asks the credentials and cooldown
actors for their snapshots and the meter for its reservations (the same messages the
admin API sends, so no actor's state is read from outside its loop), reads every
actor's mailbox counters from the supervisor and the ledger's commit timings from the
meter, then ``StateCollector`` turns that one ``State`` into metric families. An actor
that does not answer within ``ASK_TIMEOUT_S`` (restarting, or stuck behind a slow
ledger) leaves its families out of that scrape rather than failing it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import attrs
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from actors import cooldown, credentials, usage
from actors.durations import Durations
from gateway.metrics import redis as redis_metrics
from protocols.errors import GatewayError

log = logging.getLogger("tollhouse.metrics")

ASK_TIMEOUT_S = 2.0
CREDENTIAL_STATES = ("ready", "busy", "cooling", "requests_per_minute", "tokens_per_minute", "dead", "retiring")
RESERVATION_STATUSES = ("open", "settling")


@attrs.frozen
class State:
    in_flight: dict  # (protocol, transport, stream) -> calls the dispatcher is serving
    websockets: int  # Responses WebSocket connections open
    actors: dict  # name -> the supervisor's counts (mailbox depth and capacity, handled, restarts)
    ledger_commits: Durations | None
    credentials: dict | None = None  # provider -> the credentials actor's description of each
    cooldowns: dict | None = None  # the cooldown actor's snapshot
    reservations: list | None = None  # the meter's open and settling holds
    redis: redis_metrics.RedisView | None = None  # the shared backend's Redis link (None: local backend)


async def _ask(mailbox, msg) -> Any:
    try:
        return await mailbox.ask(msg, timeout=ASK_TIMEOUT_S)
    except (trio.TooSlowError, GatewayError) as exc:
        log.warning("metrics scrape: the %s actor did not answer (%s)", mailbox.name, type(exc).__name__)
        return None


async def gather(runtime) -> State:
    supervisor, actors, dispatcher = runtime.supervisor, runtime.actors, runtime.dispatcher
    return State(
        in_flight=dict(dispatcher.in_flight), websockets=len(runtime.sockets.open),
        actors={name: slot.counts() for name, slot in supervisor.slots.items()},
        ledger_commits=runtime.ledger_commits,
        credentials=await _ask(actors.credentials, credentials.Snapshot()),
        cooldowns=await _ask(actors.cooldown, cooldown.Snapshot()),
        reservations=await _ask(actors.usage, usage.Query("reservations")),
        redis=redis_metrics.view(getattr(runtime, "redis", None)))


class StateCollector:
    """A Prometheus collector of the last gathered ``State`` (``Metrics.scrape`` gathers
    one right before it collects, under a lock)."""

    def __init__(self) -> None:
        self.state: State | None = None

    def collect(self) -> Iterator:
        state = self.state
        if state is None:
            return
        yield from _traffic(state)
        yield from _actors(state)
        if state.credentials is not None:
            yield from _credentials(state.credentials)
        if state.cooldowns is not None:
            yield from _cooldowns(state.cooldowns)
        if state.reservations is not None:
            held = GaugeMetricFamily("tollhouse_reservations_held", "Credit holds of requests not yet settled "
                                     "(open) or settled but not yet on disk (settling)", labels=("status",))
            for status in RESERVATION_STATUSES:
                held.add_metric((status,), sum(1 for r in state.reservations if r["status"] == status))
            yield held
        if state.redis is not None:
            yield from redis_metrics.families(state.redis)
        if state.ledger_commits is not None:
            yield _histogram("tollhouse_ledger_commit_seconds",
                             "One ledger transaction of the meter (a batch of holds and settlements), "
                             "thread hop included", state.ledger_commits)


def _traffic(state: State) -> Iterator:
    in_flight = GaugeMetricFamily("tollhouse_requests_in_flight", "LLM calls and WebSocket turns being served "
                                  "(stream=\"true\": streams)", labels=("protocol", "transport", "stream"))
    for (protocol, transport, stream), n in sorted(state.in_flight.items(), key=str):
        in_flight.add_metric((protocol, transport.value, "true" if stream else "false"), n)
    yield in_flight
    yield GaugeMetricFamily("tollhouse_websocket_connections", "Responses WebSocket connections open",
                            value=state.websockets)


def _actors(state: State) -> Iterator:
    depth = GaugeMetricFamily("tollhouse_actor_mailbox_depth", "Messages waiting in an actor's inbox",
                              labels=("actor",))
    capacity = GaugeMetricFamily("tollhouse_actor_mailbox_capacity", "The size of an actor's inbox",
                                 labels=("actor",))
    handled = CounterMetricFamily("tollhouse_actor_handled", "Messages an actor has handled", labels=("actor",))
    restarts = CounterMetricFamily("tollhouse_actor_restarts", "Times an actor crashed and was restarted",
                                   labels=("actor",))
    for name, counts in state.actors.items():
        depth.add_metric((name,), counts["mailbox_depth"])
        capacity.add_metric((name,), counts["mailbox_capacity"])
        handled.add_metric((name,), counts["handled"])
        restarts.add_metric((name,), counts["restarts"])
    yield from (depth, capacity, handled, restarts)


def _credentials(pools: dict) -> Iterator:
    labels = ("provider", "credential")
    state = GaugeMetricFamily("tollhouse_credential_state", "1 for the state a credential is in, 0 for the others",
                              labels=(*labels, "state"))
    in_flight = GaugeMetricFamily("tollhouse_credential_in_flight", "Leases a credential holds now (calls and "
                                  "streams on it)", labels=labels)
    limit = GaugeMetricFamily("tollhouse_credential_max_concurrency", "A credential's concurrency limit",
                              labels=labels)
    for provider, described in pools.items():
        for cred in described:
            ids = (provider, cred["id"])
            for name in CREDENTIAL_STATES:
                state.add_metric((*ids, name), 1 if cred["state"] == name else 0)
            in_flight.add_metric(ids, cred["in_flight"])
            limit.add_metric(ids, cred["max_concurrency"])
    yield from (state, in_flight, limit)


def _cooldowns(snapshot: dict) -> Iterator:
    active = GaugeMetricFamily("tollhouse_cooldowns_active", "Cooldowns in force (dead credentials included), "
                               "by scope and reason", labels=("provider", "scope", "reason"))
    counts: dict[tuple, int] = {}
    for c in snapshot["active"]:
        ids = (c["provider"], c["scope"], c["reason"])
        counts[ids] = counts.get(ids, 0) + 1
    for ids, n in sorted(counts.items()):
        active.add_metric(ids, n)
    yield active
    errors = CounterMetricFamily("tollhouse_upstream_errors", "Upstream attempts that failed, by the cooldown's "
                                 "class of the error (failovers included)", labels=("provider", "class"))
    for e in snapshot.get("errors", ()):
        errors.add_metric((e["provider"], e["kind"]), e["count"])
    yield errors


def _histogram(name: str, documentation: str, durations: Durations) -> HistogramMetricFamily:
    buckets = [("+Inf" if bound == float("inf") else repr(float(bound)), n) for bound, n in durations.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=durations.total_s)
