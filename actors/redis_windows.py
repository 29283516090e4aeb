"""``RedisWindows``: the rate windows every process of a shared backend counts in.

One Lua step (``redis_scripts.ADMIT``) trims the scope's window, checks the limit and
spends the cost, on Redis's clock: exact however many processes admit at once, and
the same whatever their hosts' clocks say. While Redis is unreachable it answers from
a ``LocalWindows`` of this process (``now`` is that fallback's clock), counting each
such answer on the link; what it counted there is not carried back to Redis.
"""

from __future__ import annotations

import itertools
import os

from actors.redis_link import RedisLink, RedisUnavailable
from actors.redis_scripts import ADMIT
from actors.windows import LocalWindows

PREFIX = "tollhouse:window:"


def micros(seconds: float) -> int:
    return max(int(seconds * 1_000_000), 1)


class RedisWindows:
    def __init__(self, link: RedisLink, fallback: LocalWindows | None = None) -> None:
        self.link = link
        self.local = fallback if fallback is not None else LocalWindows()
        self._script = link.client.register_script(ADMIT)
        self._origin = os.urandom(6).hex()  # entry ids unique across processes
        self._ids = itertools.count(1)

    async def admit(self, scope: str, limit: int, window_s: float, now: float, cost: int = 1) -> float | None:
        keys = [PREFIX + scope, PREFIX + scope + ":sum"]
        args = [limit, micros(window_s), cost, f"{self._origin}.{next(self._ids)}"]
        try:
            wait_us = await self.link.call(lambda client: self._script(keys=keys, args=args))
        except RedisUnavailable:
            self.link.fell_back("windows")
            return self.local.admit_now(scope, limit, window_s, now, cost)
        return None if int(wait_us) < 0 else int(wait_us) / 1_000_000
