"""The shared backend's Redis link as metric families (only on the shared backend).

``tollhouse_redis_up`` says whether this process reaches Redis now;
``tollhouse_redis_fallbacks`` counts the answers this process gave from its own state
because it did not (rate windows, credential leases, cooldown notices), which is what
an operator alerts on: while it grows, limits hold per process, not across them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:  # coredis is loaded only by the shared backend
    from actors.redis_link import LinkStats

USES = ("windows", "leases", "rests", "fields")


@attrs.frozen
class RedisView:
    link: LinkStats
    rests_received: int  # rests other instances began, applied here


def view(redis) -> RedisView | None:
    if redis is None:
        return None
    return RedisView(redis.link.stats(), redis.rests.received)


def families(state: RedisView) -> Iterator:
    yield GaugeMetricFamily("tollhouse_redis_up", "1 while this process reaches the shared backend's Redis, "
                            "else 0 (rate limits and cooldowns are then per process)",
                            value=1 if state.link.state.value == "up" else 0)
    yield CounterMetricFamily("tollhouse_redis_link_changes", "Times the Redis link went down or came back",
                              value=state.link.changes)
    fallbacks = CounterMetricFamily("tollhouse_redis_fallbacks", "Calls answered by this process's own state "
                                    "because Redis was unreachable, by use", labels=("use",))
    for use in USES:
        fallbacks.add_metric((use,), state.link.fallbacks.get(use, 0))
    yield fallbacks
    yield CounterMetricFamily("tollhouse_redis_rests_received", "Cooldowns other instances began, applied here",
                              value=state.rests_received)
