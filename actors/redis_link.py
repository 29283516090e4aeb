"""The gateway's one connection to Redis, and whether Redis is reachable now.

Every call goes through ``RedisLink.call``, bounded by ``timeout_s``: a call that fails
or takes longer marks the link down, and the caller falls back to this process's own
state (``fell_back`` counts it). While the link is down no call is tried -- the hot path
never waits on an unreachable server -- and ``run``'s probe pings every ``retry_s``
until Redis answers, then marks it up. Each change of state is one warning line.

Redis errors can carry the server's address (and a URL its password): none leaves
this module. A failure becomes ``RedisUnavailable`` with the error's class name only,
raised ``from None`` so no traceback shows the original.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Awaitable, Callable, TypeVar

import anyio
import attrs
import coredis
import trio
from coredis.exceptions import AuthenticationError, ReadOnlyError
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.retry import NoRetryPolicy

log = logging.getLogger("tollhouse.redis")

T = TypeVar("T")

#: the failures that mean "Redis cannot serve us now" (gone, slow, refusing our password,
#: a replica after a failover), not "the command was wrong"; timeouts are OSErrors; a
#: connection closed under a command (the server went, or the pool closes it at a stop)
#: surfaces as anyio's stream errors, which coredis lets through
UNREACHABLE = (RedisConnectionError, AuthenticationError, ReadOnlyError, OSError, trio.TooSlowError,
               anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)


class LinkState(enum.Enum):
    UP = "up"
    DOWN = "down"


class RedisUnavailable(Exception):
    """Redis did not answer in time; ``reason`` names the failure's class, never where
    the server is."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"redis unavailable ({reason})")
        self.reason = reason


@attrs.frozen
class LinkStats:
    state: LinkState
    changes: int  # up -> down and down -> up, since start
    failures: int  # calls that failed or timed out
    fallbacks: dict  # use ("windows", "leases", "rests") -> calls answered by this process instead


class RedisLink:
    def __init__(self, url: str, timeout_s: float, retry_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.client: Any = coredis.Redis.from_url(
            url, decode_responses=False, retry_policy=NoRetryPolicy(), verify_version=False,
            stream_timeout=timeout_s, connect_timeout=timeout_s)
        self.state = LinkState.UP  # until a call or the first probe says otherwise
        self.changes = 0
        self.failures = 0
        self.fallbacks: dict[str, int] = {}
        self._changed = trio.Event()
        self._down_since: float | None = None
        self.closing = False  # the pool is being closed: a call it breaks is not an outage

    @property
    def up(self) -> bool:
        return self.state is LinkState.UP

    def stats(self) -> LinkStats:
        return LinkStats(self.state, self.changes, self.failures, dict(self.fallbacks))

    def fell_back(self, use: str) -> None:
        """Count one answer given by this process's own state because Redis was not there."""
        self.fallbacks[use] = self.fallbacks.get(use, 0) + 1

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``await fn(client)`` within ``timeout_s``; ``RedisUnavailable`` when the link is
        down or the call fails to reach Redis (which marks it down)."""
        if not self.up:
            raise RedisUnavailable("down")
        try:
            with trio.fail_after(self.timeout_s):
                return await fn(self.client)
        except UNREACHABLE as exc:
            reason = type(exc).__name__
        self.failures += 1
        self.mark_down(reason)
        raise RedisUnavailable(reason) from None

    def mark_down(self, reason: str) -> None:
        if self.up and not self.closing:
            self._change(LinkState.DOWN)
            self._down_since = trio.current_time()
            log.warning("redis unreachable (%s): rate windows, leases and cooldowns fall back to this "
                        "process until it answers", reason)

    def mark_up(self) -> None:
        if not self.up:
            self._change(LinkState.UP)
            down_s = trio.current_time() - (self._down_since or trio.current_time())
            log.warning("redis reachable again after %.1f s: shared rate windows, leases and cooldowns resume",
                        down_s)

    def _change(self, state: LinkState) -> None:
        self.state = state
        self.changes += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_state(self, state: LinkState) -> None:
        """Return once the link is in ``state`` (tests, and tasks that need Redis)."""
        while self.state is not state:
            await self._changed.wait()

    async def ping(self) -> bool:
        try:
            with trio.fail_after(self.timeout_s):
                await self.client.ping()
            return True
        except UNREACHABLE:
            return False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the client's pool open; find out at once whether Redis answers, and while
        it does not, ask again every ``retry_s``."""
        async with self.client:
            try:
                if not await self.ping():
                    self.mark_down("no answer at start")
                task_status.started()
                while True:
                    await self.wait_state(LinkState.DOWN)
                    while not await self.ping():
                        await trio.sleep(self.retry_s)
                    self.mark_up()
            finally:  # the gateway stops: the subscription the pool's close breaks is no outage
                self.closing = True
