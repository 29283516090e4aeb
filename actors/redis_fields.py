"""The field cache across instances: the signed fields one instance keeps, every
instance of the shared backend can put back.

A conversation's kept fields are one Redis hash (``PREFIX`` + a digest of its scope),
a field per entry. A write is ``offer``ed without waiting: the writer task sets the
entry and renews the hash's expiry (the cache's ``ttl_s``) in one Lua step. Before a
request that may get kept fields back, the instance reads the conversation's hash
(``load``, one ``HGETALL``), so a conversation that moves to another worker or
instance keeps its signatures. While Redis is unreachable each instance keeps only its
own entries (counted on the link as a fallback), and what it kept meanwhile is not
sent later.
"""

from __future__ import annotations

from typing import Mapping

import trio

from actors.redis_link import RedisLink, RedisUnavailable

PREFIX = "tollhouse:fields:"
QUEUE = 1024

KEEP = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class FieldRelay:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.written = 0  # entries this instance wrote to Redis
        self.loaded = 0  # entries read from Redis for requests here
        self._send, self._queue = trio.open_memory_channel[tuple[str, str, str, int]](QUEUE)
        self._keep = link.client.register_script(KEEP)
        self._pending: dict[tuple[str, str], int] = {}  # entries offered and not yet written

    def offer(self, scope: str, field: str, value: str, ttl_s: float) -> None:
        """Share one entry (synchronous, from the answer's tap), without waiting."""
        if not self.link.up:
            self.link.fell_back("fields")
            return
        try:
            self._send.send_nowait((scope, field, value, max(int(ttl_s * 1000), 1)))
        except trio.WouldBlock:
            self.link.fell_back("fields")
            return
        self._pending[scope, field] = self._pending.get((scope, field), 0) + 1

    def pending(self, scope: str, field: str) -> bool:
        """Whether this instance has a newer value of the entry than Redis has yet."""
        return (scope, field) in self._pending

    async def load(self, scope: str) -> Mapping[bytes, bytes]:
        """The conversation's entries as Redis holds them; none while it is unreachable."""
        if not self.link.up:
            self.link.fell_back("fields")
            return {}
        try:
            found = await self.link.call(lambda client: client.hgetall(PREFIX + scope))
        except RedisUnavailable:
            self.link.fell_back("fields")
            return {}
        self.loaded += len(found)
        return found

    async def run(self) -> None:
        """The writer: the offered entries, in order."""
        async for scope, field, value, ttl_ms in self._queue:
            try:
                await self.link.call(lambda client: self._keep(keys=[PREFIX + scope], args=[field, value, ttl_ms]))
                self.written += 1
            except RedisUnavailable:
                self.link.fell_back("fields")
            finally:
                left = self._pending.pop((scope, field), 1) - 1
                if left:
                    self._pending[scope, field] = left


__all__ = ["FieldRelay", "PREFIX"]
